"""The embedded multi-label long-tailed dataset: canvases of one to three real digits, labelled with
the set of digits they show.

Built from scikit-learn's digits, so it runs offline. A canvas is a 2×2 grid of cells; each label
of the canvas puts one real digit image of that class in its own cell (the others stay black).
Like the paper's sampled MIMIC-CXR-LT (5 head and 5 tail findings), the first half of the labels
is head and the second half tail:

- train label counts (images showing the label) fall from ``max_per_class`` to half of it over the
  head labels and from 3× to 1× ``max_per_class / imbalance_ratio`` over the tail labels (the
  digits' smallest class): 120, 101, 85, 71, 60 and 12, 9, 7, 5, 4 at the defaults;
- labels co-occur: every other canvas of tail label t also shows head label t − K/2 (while that
  label has occurrences left), as findings that come together do;
- val and test are balanced (``val_per_class`` and ``test_per_class`` canvases show each label);
  the generator's pool adds canvases until every label shows in ``max_per_class + val_per_class``
  pool canvases (train, val and pool-only), so the pool is balanced as in :mod:`digits`.

Test canvases hold only the digits' test images, and train, val and pool canvases only the
others, and each digit image goes into one canvas only, so no digit image is in two canvases
(train and test, or train and val). Every draw comes from
``seed``; the counts above are exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tailsynth.data.digits import DIGIT_NAMES, long_tail_counts
from tailsynth.errors import TailsynthError
from tailsynth.seeding import derive_seed

CELLS = 4  # a 2×2 grid
LABELS_PER_CANVAS = (1, 2, 3)
LABELS_PER_CANVAS_P = (0.5, 0.3, 0.2)


def multilabel_train_counts(num_labels: int, max_per_class: int, imbalance_ratio: float) -> list[int]:
    """Train canvases per label: the head half falls from ``max_per_class`` to half of it, the tail
    half from 3× to 1× ``max_per_class / imbalance_ratio`` (exponential profiles, at least 1)."""
    if num_labels < 2:
        raise ValueError("a multi-label dataset needs at least 2 labels")
    if imbalance_ratio < 6:
        raise TailsynthError(
            f"data.imbalance_ratio must be >= 6 for digits_multilabel, so that the tail's first count "
            f"(3 x max_per_class / ratio) stays below the head's last (max_per_class / 2); got {imbalance_ratio}"
        )
    head, tail = (num_labels + 1) // 2, num_labels // 2
    smallest = max_per_class / imbalance_ratio
    return long_tail_counts(head, max_per_class, 2.0) + long_tail_counts(tail, max(1, round(3 * smallest)), 3.0)


def canvas_labels(counts: list[int], rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Label sets of canvases in which label k shows exactly ``counts[k]`` times (in a shuffled order).

    Each tail label's occurrence opens a canvas; every other one also takes its partner head label
    (k − K/2) while that has occurrences left. The remaining head occurrences fill canvases of 1 to
    3 distinct labels, drawn in proportion to what each label has left.
    """
    num = len(counts)
    head = (num + 1) // 2
    left = list(counts)
    canvases: list[set[int]] = []
    for t in range(head, num):
        for j in range(left[t]):
            labels = {t}
            partner = t - head
            if j % 2 == 0 and left[partner] > 0:
                labels.add(partner)
                left[partner] -= 1
            canvases.append(labels)
        left[t] = 0
    while sum(left[:head]) > 0:
        n = int(rng.choice(LABELS_PER_CANVAS, p=LABELS_PER_CANVAS_P))
        have = np.flatnonzero(np.array(left[:head]) > 0)
        weights = np.array([left[k] for k in have], dtype=float)
        picked = rng.choice(have, size=min(n, len(have)), replace=False, p=weights / weights.sum())
        for k in picked:
            left[int(k)] -= 1
        canvases.append({int(k) for k in picked})
    order = rng.permutation(len(canvases))
    return [tuple(sorted(canvases[i])) for i in order]


def compose_canvas(digits: list[torch.Tensor], cells: list[int], size: int) -> torch.Tensor:
    """A (1, size, size) canvas with ``digits[i]`` (1, h, w) resized into cell ``cells[i]`` of a 2×2 grid."""
    canvas = torch.zeros(1, size, size)
    side = size // 2
    for digit, cell in zip(digits, cells, strict=True):
        tile = F.interpolate(digit[None], size=(side, side), mode="bilinear", align_corners=False)[0]
        row, col = divmod(cell, 2)
        canvas[:, row * side : (row + 1) * side, col * side : (col + 1) * side] = tile.clamp(0, 1)
    return canvas


def load_digits_multilabel(
    *, size: int, imbalance_ratio: float, max_per_class: int, test_per_class: int, val_per_class: int, seed: int
) -> dict:
    """Canvases (N, 1, size, size) in [0, 1], their label sets and splits.

    Returns ``{"images", "labels" (tuples of label indices), "split", "in_pool", "names"}``; ``split`` is
    one of ``train``, ``val``, ``test`` or ``pool_only``. See the module docstring for the counts.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise TailsynthError(f"data.size must be >= 8 for digits_multilabel canvases, got {size}")
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = digits.target.astype(np.int64)
    num = len(DIGIT_NAMES)
    rng = np.random.default_rng(derive_seed(seed, "digits_multilabel"))
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(num)]
    if min(len(ix) for ix in per_class) <= test_per_class:
        raise TailsynthError(f"data.test_per_class ({test_per_class}) leaves no digit images for training")
    rest = min(len(ix) for ix in per_class) - test_per_class
    if max_per_class + val_per_class > rest:
        # each label shows in max_per_class + val_per_class train, val and pool canvases, one digit image each
        raise TailsynthError(
            f"data.max_per_class + data.val_per_class ({max_per_class} + {val_per_class}) exceeds the {rest} digit "
            f"images the smallest class has outside test; lower one of them (or data.test_per_class)"
        )
    # test canvases draw from each class's first test_per_class images, the others from the rest
    sources = {"test": [ix[:test_per_class] for ix in per_class], "rest": [ix[test_per_class:] for ix in per_class]}
    train = multilabel_train_counts(num, max_per_class, imbalance_ratio)
    plan = {
        "train": train,
        "val": [val_per_class] * num,
        "pool_only": [max(0, max_per_class - n) for n in train],
        "test": [test_per_class] * num,
    }
    images, labels, splits = [], [], []
    used = {"test": [0] * num, "rest": [0] * num}
    for split, counts in plan.items():
        split_rng = np.random.default_rng(derive_seed(seed, "digits_multilabel", split))
        source = "test" if split == "test" else "rest"
        for label_set in canvas_labels(counts, split_rng):
            chosen = []
            for k in label_set:  # the class's images in turn: each digit image goes into one canvas
                chosen.append(x[sources[source][k][used[source][k]]])
                used[source][k] += 1
            cells = [int(c) for c in split_rng.permutation(CELLS)[: len(label_set)]]
            images.append(compose_canvas(chosen, cells, size))
            labels.append(label_set)
            splits.append(split)
    split_arr = np.array(splits)
    return {
        "images": torch.stack(images),
        "labels": labels,
        "split": split_arr,
        "in_pool": split_arr != "test",
        "names": list(DIGIT_NAMES),
    }
