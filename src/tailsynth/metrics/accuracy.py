"""Accuracy overall, per class, per shot bucket (many / medium / few) and per group (worst / average)."""

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


def group_accuracy(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, classes: list[dict]) -> dict[str, float]:
    """Accuracy of every group present in the test set, keyed ``"<class name>/<group>"``.

    A group is a (class, context) pair, as in NICO++: ``groups`` (N,) holds each test image's
    context. Groups are listed in class order, then by context name.
    """
    out = {}
    for c in classes:
        in_class = labels == c["index"]
        for g in sorted(set(groups[in_class].tolist())):
            mask = in_class & (groups == g)
            out[f"{c['name']}/{g}"] = float((pred[mask] == labels[mask]).mean())
    return out


def mean_std(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of each key over runs (seeds)."""
    ddof = 1 if len(values) > 1 else 0
    return {
        k: {"mean": float(np.mean([v[k] for v in values])), "std": float(np.std([v[k] for v in values], ddof=ddof))}
        for k in values[0]
    }


def evaluate_runs(
    predictions: list[np.ndarray], labels: np.ndarray, classes: list[dict], groups: np.ndarray | None = None
) -> tuple[dict, list[dict]]:
    """Test metrics of a method's runs (one per seed) and each run's bucket (and group) accuracies.

    ``predictions`` holds one (N,) array of predicted class indices per run, for the N test
    ``labels``; ``classes`` is the ``classes.json`` table (index order). Returns the metrics
    ``{"acc", "acc_std", "per_class_acc", "n_seeds"}`` (mean and sample std over runs; a class
    without test images has no per-class accuracy and is left out, never written as NaN) and,
    per run, its ``bucket_accuracy`` (the values that paired comparisons difference).

    With ``groups`` (N,) (each test image's context), the metrics add ``worst_group`` and
    ``avg_group`` (the lowest and the mean accuracy over the (class, context) groups of one run,
    then averaged over runs), their ``_std`` and ``group_acc`` (each group's mean over runs), and
    each run's dict its ``worst_group`` and ``avg_group``.
    """
    if not predictions:
        raise ValueError("no runs to evaluate")
    runs = [bucket_accuracy(pred, labels, classes) for pred in predictions]
    per_class = np.mean([per_class_accuracy(pred, labels, len(classes)) for pred in predictions], axis=0)
    stats = mean_std(runs)
    result = {
        "acc": {k: v["mean"] for k, v in stats.items()},
        "acc_std": {k: v["std"] for k, v in stats.items()},
        "per_class_acc": {c["name"]: float(a) for c, a in zip(classes, per_class, strict=True) if not np.isnan(a)},
        "n_seeds": len(runs),
    }
    if groups is not None:
        by_group = [group_accuracy(pred, labels, np.asarray(groups), classes) for pred in predictions]
        for run, acc in zip(runs, by_group, strict=True):
            run |= {"worst_group": min(acc.values()), "avg_group": float(np.mean(list(acc.values())))}
        for key, v in mean_std([{k: r[k] for k in ("worst_group", "avg_group")} for r in runs]).items():
            result |= {key: v["mean"], f"{key}_std": v["std"]}
        result["group_acc"] = {g: float(np.mean([acc[g] for acc in by_group])) for g in by_group[0]}
    return result, runs
