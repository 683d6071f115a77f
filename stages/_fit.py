"""Stage glue for training a classifier from a params section (classifier, oracle, retrain, fewshot_backbone),
in one process or data-parallel under ``runtime.launch``, at ``runtime.train_precision``."""

from _processes import check_split, process_group, training_device

from _common import data_loading, progress_bar


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
    params: dict,
):
    """Build and train a classifier as a params section (classifier, oracle, retrain) describes it.

    ``groups`` (N,) integer group codes, where the data has groups, serve ``balanced: group``;
    ``where`` names the section in errors; ``params`` (the whole params) give the device, the launch's
    process layout, the precision and the DataLoader workers that decode streamed ``images``
    (:mod:`tailsynth.data.stream`). Every process returns the trained model (call
    :func:`exit_unless_main` before writing anything).
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
    accelerator = process_group(params)
    check_split(accelerator, config.batch_size, f"{where}.batch_size")
    workers, _ = data_loading(params)
    with progress_bar(config.steps, f"train {section['arch']} seed {seed}") as bar:
        return fit_classifier(
            model,
            images,
            labels,
            config,
            seed=seed,
            transform=transform,
            batch_transform=batch_transform,
            device=training_device(accelerator, params),
            accelerator=accelerator,
            callback=lambda step, loss: bar.update(step + 1 - bar.n),
            log_every=25,
            groups=groups,
            workers=workers,
        )
