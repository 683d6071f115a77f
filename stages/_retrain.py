"""Stage glue for retraining on real (+ synthetic) data: retrain@<method> and the feedback sweep."""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _processes import exit_unless_main

from tailsynth.data.manifest import image_shape, read_classes, read_manifest, select_rows
from tailsynth.data.stream import ImageSet, keep_in_memory, row_files
from tailsynth.data.targets import rows_targets
from tailsynth.errors import TailsynthError
from tailsynth.methods.augment import training_augmentation
from tailsynth.synth.plan import read_synthetic

from _common import data_loading, log
from _fit import fit_from_params

AUGMENTS = ("none", "weak", "strong")


@dataclass
class RetrainData:
    """Real train images (+ synthetic): an image set of :mod:`tailsynth.data.stream` (uint8 (N, C, H, W) in
    memory, or streamed from disk past ``runtime.loader.in_memory_mib``), with ``labels`` (class indices (N,), or
    multi-hot (N, K) rows on multi-label data), ``groups`` (N,) or None, and the augmentation that
    retrain applies to them."""

    images: ImageSet
    labels: torch.Tensor
    groups: torch.Tensor | None
    num_classes: int
    n_real: int
    transform: object
    batch_transform: object

    @property
    def n_synthetic(self) -> int:
        return len(self.labels) - self.n_real


def retrain_data(params: dict, folder: Path, method: str, synthetic: Path | None = None) -> RetrainData:
    """The real train split of ``folder`` plus, with ``synthetic`` (a complete synthetic set's folder), its
    images under ``retrain.augment_generated`` (else ``method``'s own augmentation)."""
    p = params["retrain"]
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    rows = select_rows(read_manifest(folder, multilabel=True), "train")
    files, labels = row_files(folder, rows, channels), rows_targets(rows, len(classes))
    n_real = len(labels)
    groups = train_groups(folder)
    augment = params.get("augment", {})
    if synthetic is not None:
        rows = read_synthetic(synthetic)
        files = files + row_files(synthetic, rows, channels)
        added = rows_targets(rows, len(classes))
        if labels.ndim == 2 and added.ndim == 1:  # on multi-label data, an image made for class c shows c only
            added = F.one_hot(added, len(classes)).float()
        labels = torch.cat([labels, added])
        # The same per-image augmentation (and its params) as that baseline, so the comparison isolates
        # what the synthetic images add.
        name = p["augment_generated"]
        if name not in AUGMENTS:
            raise TailsynthError(f"retrain.augment_generated must be one of {', '.join(AUGMENTS)}, got {name!r}")
        transform, batch_transform = training_augmentation(name, len(classes), augment.get(name))
    else:
        transform, batch_transform = training_augmentation(method, len(classes), augment.get(method))
    if groups is not None:  # synthetic images form one more group of their class
        n_synthetic = len(labels) - n_real
        groups = torch.cat([groups, torch.full((n_synthetic,), int(groups.max()) + 1, dtype=torch.int64)])
    images = keep_in_memory(files, data_loading(params)[1])
    log.info(
        "retrain %s: %d real + %d synthetic images (%s)",
        method,
        n_real,
        len(labels) - n_real,
        "in memory" if isinstance(images, torch.Tensor) else "streamed from disk",
    )
    return RetrainData(images, labels, groups, len(classes), n_real, transform, batch_transform)


def retrain_models(params: dict, data: RetrainData):
    """Yields ``(seed, model)`` for the ``eval.seeds`` seeds, each trained as ``retrain`` says on ``data``.

    Under a multi-process ``runtime.launch`` only the main process gets the models: the others train
    their share of every seed, then exit.
    """
    from accelerate import PartialState

    for seed in range(params["eval"]["seeds"]):
        model = fit_from_params(
            params["retrain"],
            data.images,
            data.labels,
            data.num_classes,
            seed=seed,
            transform=data.transform,
            batch_transform=data.batch_transform,
            groups=data.groups,
            params=params,
        )
        if PartialState().is_main_process:
            yield seed, model
    exit_unless_main()


def train_groups(folder: Path) -> torch.Tensor | None:
    """Integer group codes (N,) of the train rows (in load_split's order), or None without a group column."""
    manifest = read_manifest(folder, multilabel=True)
    if "group" not in manifest:
        return None
    names = select_rows(manifest, "train")["group"].astype(str)
    codes = {g: i for i, g in enumerate(sorted(set(names)))}
    return torch.tensor([codes[g] for g in names], dtype=torch.int64)
