"""The embedded default dataset: scikit-learn's bundled digits, made long-tailed.

Ships with scikit-learn, so the pipeline runs offline. Splits, per class:
a balanced test split, then the *pool* (the remaining images, truncated to the smallest class so
it is balanced), inside which the long-tailed train split and a small val split are drawn.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tailsynth.errors import TailsynthError

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def long_tail_counts(num_classes: int, max_count: int, imbalance_ratio: float) -> list[int]:
    """Exponential profile: class i gets ``max_count * ratio**(-i / (K-1))`` images (at least 1)."""
    if imbalance_ratio < 1:
        raise TailsynthError(f"data.imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if num_classes == 1:
        return [max_count]
    return [max(1, round(max_count * imbalance_ratio ** (-i / (num_classes - 1)))) for i in range(num_classes)]


def load_digits_split(
    *, size: int, imbalance_ratio: float, max_per_class: int, test_per_class: int, val_per_class: int, seed: int
) -> dict:
    """Digits as float images (N, 1, size, size) in [0, 1] with labels and a split per image.

    Returns ``{"images", "labels", "split", "in_pool", "names"}``; ``split`` is one of
    ``train``, ``val``, ``test`` or ``pool_only`` (in the generator's pool only).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    pool_size = min(len(ix) for ix in per_class) - test_per_class
    counts = long_tail_counts(10, max_per_class, imbalance_ratio)
    if pool_size < counts[0] + val_per_class:
        raise TailsynthError(
            f"data.max_per_class ({max_per_class}) + data.val_per_class ({val_per_class}) exceed the "
            f"{pool_size} images per class left after data.test_per_class ({test_per_class}); lower one of them"
        )
    split = np.empty(len(y), dtype=object)
    in_pool = np.zeros(len(y), dtype=bool)
    for c, ix in enumerate(per_class):
        split[ix] = "unused"
        split[ix[:test_per_class]] = "test"
        pool = ix[test_per_class : test_per_class + pool_size]
        in_pool[pool] = True
        split[pool] = "pool_only"
        split[pool[: counts[c]]] = "train"
        split[pool[counts[c] : counts[c] + val_per_class]] = "val"
    keep = split != "unused"
    return {
        "images": x[torch.from_numpy(keep)],
        "labels": y[keep],
        "split": split[keep].astype(str),
        "in_pool": in_pool[keep],
        "names": list(DIGIT_NAMES),
    }
