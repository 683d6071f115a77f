"""Density and coverage of generated samples (Naeem et al., ICML 2020), class by class.

Each real sample ``i`` gets a ball around it whose radius is the distance to its ``k``-th nearest
*other* real sample. For ``M`` generated samples:

- density  = (1 / kM) · Σ_j #{real balls containing generated sample j}   (about 1 when the
  generated samples are distributed like the real ones; above 1 when they crowd dense regions);
- coverage = share of real samples whose ball contains at least one generated sample (in [0, 1]).

A synthetic set is class-conditional, so :func:`class_density_coverage` compares each class's
samples with the real samples of that class only, then pools: density over all generated samples
(each counted against its own class's balls), coverage over all real samples of the classes that
were generated. Distances are Euclidean in whatever feature space is passed in (the pipeline
uses the oracle's penultimate features).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def _counts(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[int, int]:
    """(Σ_j balls containing fake j, real samples whose ball holds a fake) for one class."""
    if len(real) <= k:
        raise ValueError(f"need more than k = {k} real samples per class, got {len(real)}")
    # cdist keeps memory at (N, N) and (M, N), never (M, N, D): features may be 2048-dim at real scale.
    radius = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the sample itself (distance 0)
    inside = cdist(fake, real) <= radius[None, :]  # (M, N)
    return int(inside.sum()), int(inside.any(axis=0).sum())


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of ``fake`` (M, D) against ``real`` (N, D), N > k."""
    if len(fake) == 0:
        raise ValueError("no generated samples")
    hits, covered = _counts(np.asarray(real, np.float64), np.asarray(fake, np.float64), k)
    return hits / (k * len(fake)), covered / len(real)


def class_density_coverage(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray, k: int = 5
) -> tuple[float, float]:
    """Class-conditional (density, coverage), pooled as the module docstring says.

    ``real`` (N, D) with labels (N,), ``fake`` (M, D) with labels (M,); every class in
    ``fake_labels`` needs more than ``k`` real samples.
    """
    hits = covered = n_real = 0
    for c in np.unique(fake_labels):
        r = np.asarray(real[real_labels == c], np.float64)
        if len(r) <= k:
            raise ValueError(f"class {c}: {len(r)} real samples, need more than k = {k}")
        h, cov = _counts(r, np.asarray(fake[fake_labels == c], np.float64), k)
        hits, covered, n_real = hits + h, covered + cov, n_real + len(r)
    if len(fake) == 0:
        raise ValueError("no generated samples")
    return hits / (k * len(fake)), covered / n_real
