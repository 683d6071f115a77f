"""Paired comparisons: the difference between two methods run on the same seeds or episodes.

Methods share their seeds (long-tail retraining) and episodes (few-shot), so the per-seed or
per-episode differences remove what the two runs have in common. The 95% interval is Student's t
on those differences (n − 1 degrees of freedom): with 3 seeds t = 4.30, not 1.96.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

BETTER, WORSE, INCONCLUSIVE = "better", "worse", "inconclusive"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of ``a[i] − b[i]`` with its t interval half-width and a verdict.

    ``a`` and ``b`` (n,) are paired values (the same seeds or episodes, in the same order).
    Returns ``{"diff", "ci", "n", "verdict"}``: ``verdict`` is ``better`` when the whole
    interval is above 0, ``worse`` when it is below, else ``inconclusive``. With n < 2 (or
    no spread at all, e.g. identical runs) ``ci`` is NaN or 0 and the verdict follows the sign
    only when the interval is known.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired values need equal non-empty 1-d shapes, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"diff": mean, "ci": float("nan"), "n": n, "verdict": INCONCLUSIVE}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    verdict = BETTER if mean - half > 0 else WORSE if mean + half < 0 else INCONCLUSIVE
    return {"diff": mean, "ci": half, "n": n, "verdict": verdict}
