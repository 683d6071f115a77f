"""N-way K-shot episodes over the novel classes, with support and query sets that never overlap.

One table holds every episode: ``episode``, ``way`` (position of the class in the episode),
``label`` (dataset class index), ``role`` (``support``/``query``), ``rank`` and ``image``.
Supports are drawn for the largest shot count; the K-shot support is the first K by ``rank``,
so 1-shot and 5-shot episodes share their classes and queries (nested supports) and
everything generated for the 1-shot support is a subset of the 5-shot one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tailsynth.data.manifest import select_rows
from tailsynth.errors import TailsynthError
from tailsynth.seeding import derive_seed

COLUMNS = ["episode", "way", "label", "role", "rank", "image"]


def novel_classes(manifest: pd.DataFrame, base_split: str, episode_split: str, given: list[int] | None) -> list[int]:
    """The novel classes: ``given``, or the classes with images in ``episode_split`` and none in ``base_split``.

    Both are selections of :func:`tailsynth.data.manifest.select_rows` (``pool`` is the ``in_pool`` rows).
    """
    if given:
        return sorted(int(c) for c in given)
    base = set(select_rows(manifest, base_split, "fewshot_backbone.train_split")["label"].astype(int))
    novel = set(select_rows(manifest, episode_split, "fewshot.episode_split")["label"].astype(int))
    return sorted(novel - base)


def check_episode_params(ways: int, shots: list[int], queries: int, episodes: int) -> None:
    """Clear errors for counts that make no episode."""
    if episodes < 1:
        raise TailsynthError(f"fewshot.episodes must be >= 1, got {episodes}")
    if ways < 2:
        raise TailsynthError(f"fewshot.ways must be >= 2, got {ways}")
    if not shots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in shots):
        raise TailsynthError(f"fewshot.shots must be a list of integers >= 1, e.g. [1, 5], got {shots!r}")
    if queries < 1:
        raise TailsynthError(f"fewshot.queries must be >= 1, got {queries}")


def sample_episodes(
    pool: pd.DataFrame,
    classes: list[int],
    *,
    ways: int,
    shots: list[int],
    queries: int,
    episodes: int,
    seed: int,
    class_names: dict[int, str] | None = None,
) -> pd.DataFrame:
    """Episodes drawn from ``pool`` (rows with ``image`` and ``label``) over ``classes``.

    Episode e draws (seeded by ``seed`` and e alone, so episodes do not depend on how many
    are drawn) ``ways`` classes, then one permutation of each class's images: the first
    ``max(shots)`` are the support, the next ``queries`` the queries, so the two never overlap.
    """
    check_episode_params(ways, shots, queries, episodes)
    if len(classes) < ways:
        raise TailsynthError(f"fewshot.ways = {ways} but only {len(classes)} novel classes ({classes}); lower ways")
    by_class = {c: sorted(pool.loc[pool["label"] == c, "image"].tolist()) for c in classes}
    need = max(shots) + queries
    for c, images in by_class.items():
        if len(images) < need:
            name = (class_names or {}).get(c, str(c))
            raise TailsynthError(
                f"class {name!r} has {len(images)} images for episodes, fewer than max(fewshot.shots) + "
                f"fewshot.queries = {max(shots)} + {queries}; lower fewshot.shots or fewshot.queries"
            )
    rows = []
    for e in range(episodes):
        rng = np.random.default_rng(derive_seed(seed, "episode", e))
        chosen = sorted(rng.choice(classes, size=ways, replace=False).tolist())
        for way, c in enumerate(chosen):
            images = by_class[c]
            order = rng.permutation(len(images))
            for rank, i in enumerate(order[: max(shots)]):
                rows.append((e, way, c, "support", rank, images[i]))
            for rank, i in enumerate(order[max(shots) : need]):
                rows.append((e, way, c, "query", rank, images[i]))
    return pd.DataFrame(rows, columns=COLUMNS)


def support(episodes: pd.DataFrame, episode: int, shots: int) -> pd.DataFrame:
    """The ``shots``-shot support rows of one episode (the first ``shots`` by rank of each class)."""
    e = episodes[episodes["episode"] == episode]
    return e[(e["role"] == "support") & (e["rank"] < shots)].sort_values(["way", "rank"])


def queries(episodes: pd.DataFrame, episode: int) -> pd.DataFrame:
    e = episodes[episodes["episode"] == episode]
    return e[e["role"] == "query"].sort_values(["way", "rank"])
