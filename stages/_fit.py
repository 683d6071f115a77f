"""Stage glue for training a classifier from a params section (classifier, oracle, retrain)."""

from _common import progress_bar


def fit_from_params(
    section: dict,
    images,
    labels,
    num_classes: int,
    *,
    seed: int,
    transform=None,
    batch_transform=None,
    groups=None,
    where: str = "retrain",
    device,
):
    """Build and train a classifier as a params section (classifier, oracle, retrain) describes it.

    ``groups`` (N,) integer group codes, where the data has groups, serve ``balanced: group``;
    ``where`` names the section in errors; ``device`` is where it trains (``runtime.device``).
    """
    from tailsynth.errors import TailsynthError
    from tailsynth.models.classifier import build_classifier, load_pretrained_backbone
    from tailsynth.train.fit import FitConfig, fit_classifier

    balanced = section.get("balanced", True)
    if balanced not in (True, False, "group"):
        raise TailsynthError(f"{where}.balanced must be true, false or group, got {balanced!r}")
    if balanced == "group" and groups is None:
        raise TailsynthError(
            f"{where}.balanced is group but the data has no groups (use a dataset with contexts, e.g. "
            "digits_groups or nico_pp, or set it to true)"
        )

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
        balanced=balanced,
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
            device=device,
            callback=lambda step, loss: bar.update(step + 1 - bar.n),
            log_every=25,
            groups=groups,
        )
