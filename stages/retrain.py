"""Stage retrain@<method>: train on real (+ synthetic) data for each of eval.seeds seeds."""

import sys
from pathlib import Path

import torch

from tailsynth.data.manifest import image_shape, load_rows, load_split, read_classes
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir
from tailsynth.methods.augment import AUGMENT_METHODS, training_augmentation
from tailsynth.models.classifier import save_classifier
from tailsynth.synth.runner import read_synthetic

from _common import fit_from_params, load_params, log, prepared_dir, stage


@stage
def main(method: str) -> None:
    params = load_params()
    p = params["retrain"]
    synthetic = Path("data/synthetic") / method
    if method not in AUGMENT_METHODS and method not in params.get("synth", {}):
        raise TailsynthError(
            f"unknown method {method!r}: neither a training-time method ({', '.join(AUGMENT_METHODS)}) "
            "nor a generated one with a synth section; check 'methods' in params.yaml"
        )
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    images, labels = load_split(folder, "train", channels)
    if method in AUGMENT_METHODS:
        transform, batch_transform = training_augmentation(method, len(classes), params.get("augment", {}).get(method))
    else:
        rows = read_synthetic(synthetic)
        images = torch.cat([images, load_rows(synthetic, rows, channels)])
        labels = torch.cat([labels, torch.tensor(rows["label"].tolist(), dtype=torch.int64)])
        transform, batch_transform = None, None
        log.info("retrain %s: %d real + %d synthetic images", method, len(labels) - len(rows), len(rows))
    with atomic_dir(Path("models/retrain") / method) as tmp:
        for seed in range(params["eval"]["seeds"]):
            model = fit_from_params(
                p, images, labels, len(classes), seed=seed, transform=transform, batch_transform=batch_transform
            )
            save_classifier(model, tmp / f"seed{seed}", extra={"method": method, "seed": seed})


if __name__ == "__main__":
    main(sys.argv[1])
