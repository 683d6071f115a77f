"""Stage fewshot_backbone: the frozen feature extractor of the few-shot protocol -> models/fewshot_backbone.

``source: train`` (embedded): a classifier trained on the base classes only; the novel classes
of the episodes are held out. ``source: checkpoint`` (real): a torchvision ResNet state dict,
e.g. a UniSiam ResNet-18, in safetensors or .pth (read with weights_only=True).
"""

import torch
from _not_applicable import skip_if_not_applicable
from _processes import exit_unless_main

from tailsynth.data.episodes import novel_classes
from tailsynth.data.manifest import image_shape, read_manifest, select_rows
from tailsynth.data.stream import open_images
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir
from tailsynth.methods import registry
from tailsynth.methods.augment import training_augmentation
from tailsynth.models.classifier import build_classifier, load_pretrained_backbone, save_classifier

from _common import data_loading, load_params, log, prepared_dir, require, stage
from _fit import fit_from_params

OUT = "models/fewshot_backbone"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@stage
def main() -> None:
    params = load_params()
    if skip_if_not_applicable(params, [OUT], mode=registry.FEWSHOT):
        return
    p, f = params["fewshot_backbone"], params["fewshot"]
    folder = prepared_dir(params)
    channels, size = image_shape(folder)
    if p["source"] == "checkpoint":
        path = require(p, "checkpoint", "fewshot_backbone")
        rgb = channels == 3
        model = build_classifier(
            p["arch"],
            1,  # the head is never used: only features are read
            channels,
            size,
            mean=IMAGENET_MEAN if rgb else None,
            std=IMAGENET_STD if rgb else None,
        )
        try:
            load_pretrained_backbone(model, path)
        except TailsynthError as exc:
            raise TailsynthError(str(exc).replace("classifier.weights", "fewshot_backbone.checkpoint")) from exc
        extra = {"role": "fewshot_backbone", "checkpoint": str(path)}
    elif p["source"] == "train":
        novel = set(novel_classes(read_manifest(folder), p["train_split"], f["episode_split"], f["novel_classes"]))
        rows = select_rows(read_manifest(folder), p["train_split"], "fewshot_backbone.train_split")
        labels = torch.tensor(rows["label"].tolist(), dtype=torch.int64)
        keep = torch.tensor([int(y) not in novel for y in labels], dtype=torch.bool)
        base = sorted(set(labels[keep].tolist()))
        if len(base) < 2:
            raise TailsynthError(
                f"fewshot_backbone: {len(base)} base classes in split {p['train_split']!r} once the novel classes "
                f"{sorted(novel)} are held out; need at least 2"
            )
        remap = {c: i for i, c in enumerate(base)}
        y = torch.tensor([remap[int(v)] for v in labels[keep]])
        transform, batch_transform = training_augmentation(p["augment"], len(base))
        model = fit_from_params(
            p,
            open_images(folder, rows[keep.numpy()], channels, data_loading(params)[1]),
            y,
            len(base),
            seed=p["seed"],
            transform=transform,
            batch_transform=batch_transform,
            where="fewshot_backbone",
            params=params,
        )
        exit_unless_main()
        log.info("few-shot backbone trained on %d images of base classes %s", int(keep.sum()), base)
        extra = {"role": "fewshot_backbone", "base_classes": base}
    else:
        raise TailsynthError(f"fewshot_backbone.source must be train or checkpoint, got {p['source']!r}")
    with atomic_dir(OUT) as tmp:
        save_classifier(model, tmp, extra=extra)


if __name__ == "__main__":
    main()
