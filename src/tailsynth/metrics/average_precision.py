"""Average precision per class and its mean (mAP), for multi-label predictions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def per_class_ap(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP of each class from 0/1 ``targets`` (N, K) and ``scores`` (N, K); NaN for a class without positives."""
    targets = np.asarray(targets)
    out = np.full(targets.shape[1], np.nan)
    for k in range(targets.shape[1]):
        if targets[:, k].any():
            out[k] = average_precision_score(targets[:, k], scores[:, k])
    return out


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """The mean of :func:`per_class_ap` over classes with at least one positive."""
    return float(np.nanmean(per_class_ap(targets, scores)))
