"""Sample grids: one row per class, a few images each."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid

from tailsynth.data.images import save_png


def class_grid(images: torch.Tensor, labels: torch.Tensor, per_row: int = 8, pad: int = 2) -> torch.Tensor:
    """(C, H', W') grid of ``images`` (N, C, H, W) in [0, 1]: a row per label (sorted), ``per_row`` each.

    Rows with fewer images are padded with blank cells.
    """
    rows = []
    for label in sorted(set(labels.tolist())):
        chosen = images[labels == label][:per_row]
        blank = torch.zeros(per_row - len(chosen), *images.shape[1:])
        rows.append(torch.cat([chosen.float(), blank]))
    cells = torch.cat(rows) if rows else torch.zeros(1, *images.shape[1:])
    grid = make_grid(cells, nrow=per_row, padding=pad, pad_value=1.0)
    return grid[:1] if images.shape[1] == 1 else grid


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path, per_row: int = 8) -> None:
    save_png(class_grid(images, labels, per_row), path)
