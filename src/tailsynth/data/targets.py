"""Training targets of a prepared split: class indices (single-label) or multi-hot rows (multi-label).

A stage that trains or evaluates on either kind of data reads its split with :func:`load_targets`
and branches on ``targets.ndim``: 1 for class indices (N,), 2 for multi-hot (N, K) rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tailsynth.data.manifest import load_rows, read_manifest, select_rows, split_labels


def is_multilabel(manifest: pd.DataFrame) -> bool:
    """True for a multi-label manifest (a ``labels`` column instead of ``label``)."""
    return "labels" in manifest.columns


def multi_hot(cells, num_classes: int) -> torch.Tensor:
    """float32 (N, K) 0/1 rows from ``labels`` cells (``|``-joined class indices, blank for none).

    A class index outside ``0 .. num_classes - 1`` is a ValueError (the manifest and classes.json disagree).
    """
    out = torch.zeros(len(cells), num_classes, dtype=torch.float32)
    for i, cell in enumerate(cells):
        for k in split_labels(cell):
            if not 0 <= k < num_classes:
                raise ValueError(f"label {k} outside the {num_classes} classes")
            out[i, k] = 1.0
    return out


def shows_class(rows: pd.DataFrame, k: int) -> pd.Series:
    """Boolean mask of the manifest ``rows`` that show class ``k`` (``label == k``, or ``k`` among ``labels``)."""
    if is_multilabel(rows):
        return rows["labels"].map(lambda cell: k in split_labels(cell)).astype(bool)
    return rows["label"] == k


def soft_targets(cells, num_classes: int) -> torch.Tensor:
    """float32 (N, K) rows from ``soft_labels`` cells (``k=w`` entries joined by ``|``; blank for none)."""
    out = torch.zeros(len(cells), num_classes, dtype=torch.float32)
    for i, cell in enumerate(cells):
        for entry in str(cell).split("|") if cell == cell and str(cell) else []:
            k, w = entry.split("=")
            if not 0 <= int(k) < num_classes or not 0 <= float(w) <= 1:
                raise ValueError(f"soft label {entry!r} outside the {num_classes} classes or [0, 1]")
            out[i, int(k)] = float(w)
    return out


def rows_targets(rows: pd.DataFrame, num_classes: int) -> torch.Tensor:
    """The targets of manifest ``rows``: int64 (N,) from ``label``, float32 multi-hot (N, K) from
    ``labels`` or, where a synthetic set has them (fusion's soft label policy), weights in [0, 1] from
    ``soft_labels``."""
    if "soft_labels" in rows:
        return soft_targets(rows["soft_labels"].tolist(), num_classes)
    if is_multilabel(rows):
        return multi_hot(rows["labels"].tolist(), num_classes)
    return torch.from_numpy(rows["label"].to_numpy(dtype=np.int64, copy=True))


def load_targets(
    folder: str | Path, split: str | list[str], channels: int, num_classes: int, param: str = "split"
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and their targets (see :func:`rows_targets`) of the rows ``split`` selects.

    Unlike :func:`tailsynth.data.manifest.load_split`, a multi-label folder is accepted.
    """
    rows = select_rows(read_manifest(folder, multilabel=True), split, param)
    return load_rows(folder, rows, channels), rows_targets(rows, num_classes)


def open_targets(
    folder: str | Path,
    split: str | list[str],
    channels: int,
    num_classes: int,
    in_memory_bytes: int,
    param: str = "split",
):
    """As :func:`load_targets`, but the images are an image set of :mod:`tailsynth.data.stream`: a uint8
    tensor when the split takes at most ``in_memory_bytes``, else streamed from disk."""
    from tailsynth.data.stream import open_images

    rows = select_rows(read_manifest(folder, multilabel=True), split, param)
    return open_images(folder, rows, channels, in_memory_bytes), rows_targets(rows, num_classes)
