"""Stage glue for training a classifier from a params section (classifier, oracle, retrain)."""

from _common import device, progress_bar


def fit_from_params(
    section: dict, images, labels, num_classes: int, *, seed: int, transform=None, batch_transform=None
):
    """Build and train a classifier as a params section (classifier, oracle, retrain) describes it."""
    from tailsynth.models.classifier import build_classifier, load_pretrained_backbone
    from tailsynth.train.fit import FitConfig, fit_classifier

    model = build_classifier(
        section["arch"],
        num_classes,
        images.shape[1],
        images.shape[-1],
        width=section.get("width", 32),
        stem_stride=section.get("stem_stride", 2),
        seed=seed,
    )
    if section.get("weights"):
        load_pretrained_backbone(model, section["weights"])
    config = FitConfig(
        steps=section["steps"],
        batch_size=section["batch_size"],
        lr=section["lr"],
        balanced=section.get("balanced", True),
    )
    with progress_bar(config.steps, f"train {section['arch']} seed {seed}") as bar:
        return fit_classifier(
            model,
            images,
            labels,
            config,
            seed=seed,
            transform=transform,
            batch_transform=batch_transform,
            device=device(),
            callback=lambda step, loss: bar.update(step + 1 - bar.n),
            log_every=25,
        )
