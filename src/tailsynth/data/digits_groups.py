"""The embedded group-imbalanced dataset: the long-tailed digits, each image shown in one visual context.

A stand-in for NICO++ (classes x contexts) built from the same real digits as ``digits``: the
splits, the class profile and the pool are exactly those of :func:`load_digits_split`, and every
image is drawn in one of four contexts (``plain``, ``inverted``, ``rotated`` by 90 degrees,
``thick`` strokes). A group is a (class, context) pair.

- **train**: each class has a *dominant* context (class ``c``: context ``c mod 4``) and the others
  follow it with geometrically falling shares, down to ``1 / group_ratio`` of the dominant one, so
  the rarest groups of the tail classes get one image or none (nearly absent);
- **val, test and the pool**: contexts cycle through each class's images, so every group has the
  same number of images up to one (test: 50 a class gives 13, 13, 12, 12).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tailsynth.data.digits import load_digits_split
from tailsynth.errors import TailsynthError

CONTEXTS = ("plain", "inverted", "rotated", "thick")


def context_shares(group_ratio: float, n_contexts: int = len(CONTEXTS)) -> np.ndarray:
    """(n_contexts,) shares of a class's train images, dominant context first: ``ratio**(-j / (n - 1))``, normalised."""
    if group_ratio < 1:
        raise TailsynthError(f"data.group_ratio must be >= 1, got {group_ratio}")
    w = np.asarray([group_ratio ** (-j / (n_contexts - 1)) for j in range(n_contexts)])
    return w / w.sum()


def split_counts(n: int, shares: np.ndarray) -> list[int]:
    """``n`` split by ``shares`` into whole counts that sum to ``n`` (largest remainders first, ties to the front)."""
    raw = n * shares
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def apply_context(images: torch.Tensor, context: str) -> torch.Tensor:
    """``images`` (N, 1, H, W) in [0, 1], drawn in ``context``."""
    if context == "plain":
        return images
    if context == "inverted":
        return 1 - images
    if context == "rotated":
        return torch.rot90(images, 1, dims=(2, 3))
    if context == "thick":  # a 3 x 3 grey-level dilation thickens the strokes
        return F.max_pool2d(images, 3, stride=1, padding=1)
    raise ValueError(f"unknown context {context!r}")


def load_digits_groups(*, group_ratio: float, **digits_args) -> dict:
    """:func:`load_digits_split` (same images, labels, splits and pool) plus a context per image.

    ``digits_args`` are :func:`load_digits_split`'s arguments. Returns its dict with the images
    redrawn in their contexts and ``groups`` (N,) context names added.
    """
    d = load_digits_split(**digits_args)
    shares = context_shares(group_ratio)
    labels, split = d["labels"], d["split"]
    context = np.empty(len(labels), dtype=int)
    for c in range(len(d["names"])):
        for s in np.unique(split):
            ix = np.flatnonzero((labels == c) & (split == s))  # in the digits' seeded order
            if s == "train":
                order = [(c + j) % len(CONTEXTS) for j in range(len(CONTEXTS))]  # dominant context first
                context[ix] = np.repeat(order, split_counts(len(ix), shares))
            else:
                context[ix] = np.arange(len(ix)) % len(CONTEXTS)
    images = d["images"].clone()
    for j, name in enumerate(CONTEXTS):
        mask = torch.from_numpy(context == j)
        images[mask] = apply_context(images[mask], name)
    return {**d, "images": images, "groups": np.asarray(CONTEXTS, dtype=object)[context].astype(str)}
