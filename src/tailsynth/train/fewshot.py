"""Episodic few-shot evaluation: a linear probe on L2-normalised frozen features.

Per episode, a multinomial logistic regression (L2, C = 1, lbfgs) is fitted on the support
features (real support plus whatever a method adds) and scored on the queries; the result over
E episodes is mean ± 1.96·std/√E.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from tailsynth.data.episodes import queries, support


def l2_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_accuracy(
    support_x: np.ndarray,
    support_y: np.ndarray,
    query_x: np.ndarray,
    query_y: np.ndarray,
    *,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Query accuracy of a logistic regression fitted on the support.

    ``support_x`` (S, D), ``support_y`` (S,), ``query_x`` (Q, D), ``query_y`` (Q,); features are
    L2-normalised here. With lbfgs and several classes scikit-learn fits the multinomial model.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(l2_rows(support_x), support_y)
    return float((clf.predict(l2_rows(query_x)) == query_y).mean())


def mean_ci95(accuracies: list[float]) -> dict[str, float]:
    """``{"mean", "std", "ci95", "episodes"}`` with ci95 = 1.96·std/√E (sample std, ddof = 1).

    With a single episode there is no spread to estimate, so ``std`` and ``ci95`` are left out.
    """
    a = np.asarray(accuracies, dtype=float)
    if len(a) == 0:
        raise ValueError("no episode accuracies")
    out = {"mean": float(a.mean()), "episodes": int(len(a))}
    if len(a) > 1:
        std = float(a.std(ddof=1))
        out.update(std=std, ci95=float(1.96 * std / np.sqrt(len(a))))
    return out


def evaluate_episodes(
    episodes: pd.DataFrame,
    shots: list[int],
    features: dict[str, np.ndarray],
    extras: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    c: float = 1.0,
    max_iter: int = 1000,
) -> dict[int, list[float]]:
    """Per shot count, the query accuracy of every episode (in episode order).

    ``episodes`` is the table of ``tailsynth.data.episodes``; ``features`` maps each episode
    image to its (D,) feature; ``extras(episode, shots)`` returns the features (A, D) and labels
    (A,) a method adds to that support.
    """
    out: dict[int, list[float]] = {}
    for k in shots:
        accs = []
        for e in sorted(set(episodes["episode"])):
            sup, qry = support(episodes, e, k), queries(episodes, e)
            x = np.stack([features[i] for i in sup["image"]])
            y = sup["label"].to_numpy()
            if extras is not None:
                ex, ey = extras(e, k)
                if len(ex):
                    x, y = np.concatenate([x, ex]), np.concatenate([y, ey])
            qx = np.stack([features[i] for i in qry["image"]])
            accs.append(probe_accuracy(x, y, qx, qry["label"].to_numpy(), c=c, max_iter=max_iter))
        out[k] = accs
    return out
