"""Image sets that stream from disk, and batches gathered from them, so that a split need not fit in RAM.

An image set is either a uint8 tensor (N, C, H, W) held in memory (the fast path for small data) or
an :class:`ImageFiles`, which decodes image i from its file on each access. Both have ``len`` and
``shape``, and :func:`batches` turns either into the same uint8 batches: a stage picks one with
:func:`open_images` and the training and evaluation code does not see which.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from tailsynth.data.images import load_image_uint8
from tailsynth.data.manifest import image_paths, stored_size
from tailsynth.errors import TailsynthError


class ImageFiles(Dataset):
    """Images read from ``paths`` on each access: item i is uint8 (channels, H, W), resized and centre-cropped
    to ``size`` px when given (originals kept in place), else as stored.

    Every image must have the shape of the first (prepared and synthetic sets do); ``shape`` is
    (N, C, H, W), read from the first file, like a tensor's.
    """

    def __init__(self, paths: Sequence[str | Path], channels: int, size: int | None = None):
        self.paths = [str(p) for p in paths]
        self.channels = channels
        self.size = size
        self._shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image_uint8(self.paths[i], self.size, self.channels)
        if self._shape is not None and tuple(image.shape) != self._shape:
            raise TailsynthError(
                f"image {self.paths[i]} is {tuple(image.shape)}, not {self._shape} as the first one; "
                "re-run the stage that wrote it"
            )
        return image

    @property
    def shape(self) -> tuple[int, int, int, int]:
        if self._shape is None:
            if not self.paths:
                return (0, self.channels, 0, 0)
            self._shape = tuple(load_image_uint8(self.paths[0], self.size, self.channels).shape)
        return (len(self), *self._shape)

    def __add__(self, other: ImageFiles) -> ImageFiles:
        if other.channels != self.channels or None not in (self.size, other.size) and self.size != other.size:
            raise ValueError("cannot join image sets of other channels or sizes")
        # Resizing an image already at the size is a no-op: kept originals join a synthetic set at their size.
        return ImageFiles(self.paths + other.paths, self.channels, self.size or other.size)


ImageSet = torch.Tensor | ImageFiles


def row_files(folder: str | Path, rows: pd.DataFrame, channels: int) -> ImageFiles:
    """The images of manifest ``rows`` of ``folder`` (a prepared or synthetic set), not read yet: the files
    their ``image`` column names (see :func:`tailsynth.data.manifest.image_paths`)."""
    return ImageFiles(image_paths(folder, rows["image"]), channels, stored_size(folder))


def open_images(folder: str | Path, rows: pd.DataFrame, channels: int, in_memory_bytes: int) -> ImageSet:
    """The images of manifest ``rows`` of ``folder``, through :func:`keep_in_memory`."""
    return keep_in_memory(row_files(folder, rows, channels), in_memory_bytes)


def keep_in_memory(files: ImageFiles, in_memory_bytes: int) -> ImageSet:
    """``files`` decoded into one uint8 tensor (N, C, H, W) when that takes at most ``in_memory_bytes``,
    else ``files`` itself, to stream. The size is the first image's times the count: one decode."""
    n, c, h, w = files.shape
    if n * c * h * w > in_memory_bytes:
        return files
    out = torch.empty(n, c, h, w, dtype=torch.uint8)
    for i in range(n):
        out[i] = files[i]
    return out


def select(images: ImageSet, index: torch.Tensor) -> ImageSet:
    """The images at ``index`` (an int64 (M,) index or a bool (N,) mask), of the same kind as ``images``."""
    if isinstance(images, torch.Tensor):
        return images[index]
    if index.dtype == torch.bool:
        index = index.nonzero()[:, 0]
    return ImageFiles([images.paths[i] for i in index.tolist()], images.channels, images.size)


def batches(images: ImageSet, index_batches: Iterable[torch.Tensor], workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 (B, C, H, W) batches: ``images`` at each (B,) index tensor of ``index_batches``, in order.

    A tensor is indexed in this process; an :class:`ImageFiles` is decoded by ``workers`` DataLoader
    worker processes (0: in this one), a few batches ahead. The batches are the same either way.
    """
    if isinstance(images, torch.Tensor):
        for idx in index_batches:
            yield images[idx]
        return
    index_batches = [idx.tolist() for idx in index_batches]
    loader = DataLoader(
        images,
        batch_sampler=index_batches,
        num_workers=workers,
        collate_fn=_stack,
        # Its own generator: a DataLoader otherwise draws its workers' seed from torch's global stream,
        # which would shift the draws of everything after it (dropout, for one).
        generator=torch.Generator(),
    )
    yield from loader


def in_order(n: int, batch_size: int) -> list[torch.Tensor]:
    """Index batches 0 .. n-1 in order, ``batch_size`` at a time: a pass over a whole set."""
    return [torch.arange(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)
