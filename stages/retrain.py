"""Stage retrain@<method>: train on real (+ synthetic) data for each of eval.seeds seeds."""

import sys
from pathlib import Path

import torch

from tailsynth.data.manifest import image_shape, load_rows, load_split, read_classes, read_manifest, select_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir
from tailsynth.methods import registry
from tailsynth.methods.augment import training_augmentation
from tailsynth.models.classifier import save_classifier
from tailsynth.synth.plan import read_synthetic

from _common import load_params, log, prepared_dir, stage
from _fit import fit_from_params

AUGMENTS = ("none", "weak", "strong")


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.LONG_TAIL)
    params = load_params()
    p = params["retrain"]
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    images, labels = load_split(folder, "train", channels)
    n_real = len(labels)
    groups = train_groups(folder)
    augment = params.get("augment", {})
    if m.generated:
        rows = read_synthetic(m.synthetic_dir(registry.LONG_TAIL))
        images = torch.cat([images, load_rows(m.synthetic_dir(registry.LONG_TAIL), rows, channels)])
        labels = torch.cat([labels, torch.tensor(rows["label"].tolist(), dtype=torch.int64)])
        # The same per-image augmentation (and its params) as that baseline, so the comparison isolates
        # what the synthetic images add.
        name = p["augment_generated"]
        if name not in AUGMENTS:
            raise TailsynthError(f"retrain.augment_generated must be one of {', '.join(AUGMENTS)}, got {name!r}")
        transform, batch_transform = training_augmentation(name, len(classes), augment.get(name))
    else:
        transform, batch_transform = training_augmentation(method, len(classes), augment.get(method))
    n_synthetic = len(labels) - n_real
    if groups is not None:  # synthetic images form one more group of their class
        groups = torch.cat([groups, torch.full((n_synthetic,), int(groups.max()) + 1, dtype=torch.int64)])
    log.info("retrain %s: %d real + %d synthetic images", method, n_real, n_synthetic)
    with atomic_dir(Path("models/retrain") / method) as tmp:
        for seed in range(params["eval"]["seeds"]):
            model = fit_from_params(
                p,
                images,
                labels,
                len(classes),
                seed=seed,
                transform=transform,
                batch_transform=batch_transform,
                groups=groups,
            )
            save_classifier(
                model,
                tmp / f"seed{seed}",
                extra={"method": method, "seed": seed, "n_real": n_real, "n_synthetic": n_synthetic},
            )


def train_groups(folder) -> torch.Tensor | None:
    """Integer group codes (N,) of the train rows (in load_split's order), or None without a group column."""
    manifest = read_manifest(folder)
    if "group" not in manifest:
        return None
    names = select_rows(manifest, "train")["group"].astype(str)
    codes = {g: i for i, g in enumerate(sorted(set(names)))}
    return torch.tensor([codes[g] for g in names], dtype=torch.int64)


if __name__ == "__main__":
    main(sys.argv[1])
