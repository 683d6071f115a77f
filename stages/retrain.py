"""Stage retrain@<method>: train on real (+ synthetic) data for each of eval.seeds seeds."""

import sys
from pathlib import Path

import torch

from tailsynth.data.manifest import image_shape, load_rows, load_split, read_classes
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir
from tailsynth.methods.augment import AUGMENT_METHODS, training_augmentation
from tailsynth.models.classifier import save_classifier
from tailsynth.synth.plan import read_synthetic

from _common import load_params, log, prepared_dir, stage
from _fit import fit_from_params


@stage
def main(method: str) -> None:
    params = load_params()
    p = params["retrain"]
    synthetic = Path("data/synthetic") / method
    generated = params.get("methods", {}).get(method, {}).get("input") == str(synthetic)
    if method not in AUGMENT_METHODS and not generated:
        raise TailsynthError(
            f"unknown method {method!r}: neither a training-time method ({', '.join(AUGMENT_METHODS)}) "
            f"nor a generated one (methods.{method}.input: {synthetic}); check 'methods' in params.yaml"
        )
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    images, labels = load_split(folder, "train", channels)
    n_real = len(labels)
    if method in AUGMENT_METHODS:
        transform, batch_transform = training_augmentation(method, len(classes), params.get("augment", {}).get(method))
    else:
        rows = read_synthetic(synthetic)
        images = torch.cat([images, load_rows(synthetic, rows, channels)])
        labels = torch.cat([labels, torch.tensor(rows["label"].tolist(), dtype=torch.int64)])
        # Same per-image augmentation as the baselines, so the comparison isolates the synthetic data.
        transform, batch_transform = training_augmentation(p["augment_generated"], len(classes))
    n_synthetic = len(labels) - n_real
    log.info("retrain %s: %d real + %d synthetic images", method, n_real, n_synthetic)
    with atomic_dir(Path("models/retrain") / method) as tmp:
        for seed in range(params["eval"]["seeds"]):
            model = fit_from_params(
                p, images, labels, len(classes), seed=seed, transform=transform, batch_transform=batch_transform
            )
            save_classifier(
                model,
                tmp / f"seed{seed}",
                extra={"method": method, "seed": seed, "n_real": n_real, "n_synthetic": n_synthetic},
            )


if __name__ == "__main__":
    main(sys.argv[1])
