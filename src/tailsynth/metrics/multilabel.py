"""Multi-label test metrics: macro mAP overall, per shot bucket, head and tail, and over runs (seeds)."""

from __future__ import annotations

import numpy as np

from tailsynth.data.manifest import BUCKETS
from tailsynth.metrics.accuracy import mean_std
from tailsynth.metrics.average_precision import per_class_ap


def bucket_map(targets: np.ndarray, scores: np.ndarray, classes: list[dict]) -> dict[str, float]:
    """Macro mAP over all classes (``overall``), over each shot bucket's classes (``many``, ``medium``,
    ``few``), over the tail (``tail``: the few bucket) and the head (``head``: every other class).

    ``targets`` 0/1 (N, K) and ``scores`` (N, K) of the test images, ``classes`` the classes.json
    table. Classes without a positive test image are left out of every mean; a key whose classes
    all lack one is left out.
    """
    ap = per_class_ap(targets, scores)
    bucket_of = np.array([c["bucket"] for c in classes])
    masks = {"overall": np.ones(len(classes), dtype=bool)}
    masks |= {b: bucket_of == b for b in BUCKETS}
    masks |= {"head": bucket_of != "few", "tail": bucket_of == "few"}
    return {key: float(np.mean(ap[m][~np.isnan(ap[m])])) for key, m in masks.items() if (~np.isnan(ap[m])).any()}


def evaluate_multilabel_runs(
    scores: list[np.ndarray], targets: np.ndarray, classes: list[dict]
) -> tuple[dict, list[dict]]:
    """Test metrics of a multi-label method's runs (one (N, K) score array per seed) on 0/1 ``targets``.

    Returns ``{"map", "map_std", "per_class_ap", "n_seeds"}`` (mean and sample std over runs of
    :func:`bucket_map`; ``per_class_ap`` is each class's AP averaged over runs, classes without a
    positive test image left out) and, per run, its :func:`bucket_map` (what paired comparisons use).
    """
    if not scores:
        raise ValueError("no runs to evaluate")
    runs = [bucket_map(targets, s, classes) for s in scores]
    per_class = np.mean([per_class_ap(targets, s) for s in scores], axis=0)
    stats = mean_std(runs)
    result = {
        "map": {k: v["mean"] for k, v in stats.items()},
        "map_std": {k: v["std"] for k, v in stats.items()},
        "per_class_ap": {c["name"]: float(a) for c, a in zip(classes, per_class, strict=True) if not np.isnan(a)},
        "n_seeds": len(runs),
    }
    return result, runs
