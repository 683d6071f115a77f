"""Accuracy overall, per class and per shot bucket (many / medium / few)."""

from __future__ import annotations

import numpy as np

from tailsynth.data.manifest import BUCKETS


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) accuracy of each class; NaN for a class with no test image."""
    acc = np.full(num_classes, np.nan)
    for k in range(num_classes):
        mask = labels == k
        if mask.any():
            acc[k] = float((pred[mask] == k).mean())
    return acc


def bucket_accuracy(pred: np.ndarray, labels: np.ndarray, classes: list[dict]) -> dict[str, float]:
    """``{"overall", "many", "medium", "few"}``: accuracy over the test images of each bucket's classes.

    A bucket with no class is left out.
    """
    out = {"overall": float((pred == labels).mean())}
    bucket_of = np.array([c["bucket"] for c in classes])
    for bucket in BUCKETS:
        mask = bucket_of[labels] == bucket
        if mask.any():
            out[bucket] = float((pred[mask] == labels[mask]).mean())
    return out


def mean_std(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of each key over runs (seeds)."""
    ddof = 1 if len(values) > 1 else 0
    return {
        k: {"mean": float(np.mean([v[k] for v in values])), "std": float(np.std([v[k] for v in values], ddof=ddof))}
        for k in values[0]
    }
