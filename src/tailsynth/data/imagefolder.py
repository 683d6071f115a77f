"""Adapter for ``root/<split>/<class name>/*`` or ``root/<class name>/*`` image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tailsynth.data.images import IMAGE_SUFFIXES
from tailsynth.data.prepare import Record
from tailsynth.errors import TailsynthError

SPLITS = ("train", "val", "test")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def scan_imagefolder(
    root: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[str]]:
    """Records and sorted class names of an image-folder dataset.

    With ``root/train`` present, sub-folders ``train``/``val``/``test`` give the splits; otherwise
    each class's images are shuffled (seeded) and split by the fractions. Train and val images
    form the pool.
    """
    root = Path(root)
    if not root.is_dir():
        raise TailsynthError(f"data.root: dataset folder {root} not found; set data.root to an existing folder")
    if (root / "train").is_dir():
        by_split = {s: _class_dirs(root / s) for s in SPLITS if (root / s).is_dir()}
        names = sorted(set().union(*[set(d) for d in by_split.values()]))
        if not names:
            raise TailsynthError(f"data.root: {root / 'train'} has no class folders")
        assigned = []
        for split, dirs in by_split.items():
            for name, folder in dirs.items():
                files = _images_in(folder)
                if not files:  # an empty test or val folder would make the class vanish from the metrics
                    raise TailsynthError(f"class folder {folder} has no images; add images or remove the folder")
                assigned += [(f, names.index(name), split) for f in files]
    else:
        dirs = _class_dirs(root)
        names = sorted(dirs)
        if not names:
            raise TailsynthError(f"data.root: {root} has no class folders (expected root/<class>/image files)")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise TailsynthError("data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1")
        rng = np.random.default_rng(seed)
        assigned = []
        for k, name in enumerate(names):
            files = _images_in(dirs[name])
            if not files:
                raise TailsynthError(f"class folder {dirs[name]} has no images; add images or remove the folder")
            order = rng.permutation(len(files))
            n_test, n_val = round(len(files) * test_fraction), round(len(files) * val_fraction)
            for rank, i in enumerate(order):
                split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
                assigned.append((files[i], k, split))
    records = [
        Record(key=f"{i:07d}", image=path, label=label, split=split, in_pool=split in ("train", "val"))
        for i, (path, label, split) in enumerate(assigned)
    ]
    return records, names
