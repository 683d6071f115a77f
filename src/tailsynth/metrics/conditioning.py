"""Does a dual-conditioned generator use its conditioning image? A paired, swapped design.

For each class, pairs (A, B) of real images of that class; every pair is generated from A and from
B with the same seeds and prompt. A sample conditioned on A should lie closer (oracle feature
space) to A than to B. Because each pair is used both ways, a generator that ignores the image
scores exactly a gap of 0 and a fraction of 0.5 in expectation, whatever images are picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tailsynth.seeding import derive_seed


@dataclass(frozen=True)
class ConditioningDesign:
    """Row i: condition on image ``cond[i]``, compare with ``other[i]`` (indices into the image set),
    class ``labels[i]``, seed ``seeds[i]``; rows 2j and 2j + 1 are one pair, swapped."""

    cond: list[int]
    other: list[int]
    labels: list[int]
    seeds: list[int]


def conditioning_design(
    labels: torch.Tensor, *, pairs: int, seeds: int, seed: int, name: str = ""
) -> ConditioningDesign:
    """Up to ``pairs`` disjoint pairs per class of ``labels`` (N,) (fewer where the class has fewer
    than 2·pairs images; none below 2), picked by a seeded permutation; ``seeds`` seeds per pair,
    shared by both directions. ``name`` (e.g. the split) enters the seeds."""
    cond, other, rows_labels, row_seeds = [], [], [], []
    for k in sorted(set(labels.tolist())):
        idx = torch.nonzero(labels == k).flatten().numpy()
        picked = idx[np.random.default_rng(derive_seed(seed, name, k, "pairs")).permutation(len(idx))]
        n = min(pairs, len(picked) // 2)
        for j in range(n):
            a, b = int(picked[2 * j]), int(picked[2 * j + 1])
            for s in range(seeds):
                sample_seed = derive_seed(seed, name, k, j, s)
                for c, o in ((a, b), (b, a)):
                    cond.append(c)
                    other.append(o)
                    rows_labels.append(int(k))
                    row_seeds.append(sample_seed)
    return ConditioningDesign(cond, other, rows_labels, row_seeds)


def conditioning_distances(samples: torch.Tensor, cond: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """From features (N, D) of the samples, their conditioning images and the other images of their
    pairs: mean L2 distances ``d_cond`` and ``d_other``, ``gap`` = d_other − d_cond, and ``closer`` (the
    fraction of samples nearer their conditioning image; ties count half)."""
    d_cond = (samples - cond).norm(dim=1)
    d_other = (samples - other).norm(dim=1)
    closer = (d_cond < d_other).float() + 0.5 * (d_cond == d_other).float()
    return {
        "d_cond": float(d_cond.mean()),
        "d_other": float(d_other.mean()),
        "gap": float(d_other.mean() - d_cond.mean()),
        "closer": float(closer.mean()),
        "n": int(len(samples)),
    }
