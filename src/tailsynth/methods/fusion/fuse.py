"""Head/tail fusion: which samples are tail, their K nearest head samples by CAM map, the masks that
combine the two embeddings, and the label of the result.

Index convention: every sample is named by its *global* position in the latent index (the row
order of ``data/latents/index.csv``, which the CAM maps share). The K-NN index is built on the head
subset, so its answers are positions inside that subset; :func:`head_neighbours` maps them back to
global positions. The reference code used the subset positions as global ones (its "neighbour" was
an arbitrary sample, possibly a tail one) and read the tail sample's map at its position among the
tail samples; both are tested against here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics.pairwise import euclidean_distances

from tailsynth.data.manifest import join_labels, split_labels
from tailsynth.errors import TailsynthError
from tailsynth.seeding import derive_seed

LABEL_POLICIES = ("tail", "union", "soft")
THRESHOLD_MODES = ("fixed", "random_per_class")


def tail_classes(classes: list[dict], *, buckets: list[str] | None, names: list | None) -> list[int]:
    """Indices of the tail classes: ``names`` (class names or indices, param ``fusion.tail_classes``)
    when given, else the classes whose shot bucket is in ``buckets`` (``fusion.buckets``)."""
    if names:
        by_name = {str(c["name"]): int(c["index"]) for c in classes}
        indices = {int(c["index"]) for c in classes}
        out = []
        for n in names:
            if isinstance(n, int) and not isinstance(n, bool) and n in indices:
                out.append(n)
            elif str(n) in by_name:
                out.append(by_name[str(n)])
            else:
                raise TailsynthError(
                    f"fusion.tail_classes names unknown class {n!r}; the classes are {', '.join(by_name)}"
                )
        return sorted(set(out))
    unknown = set(buckets or []) - {"many", "medium", "few"}
    if unknown or not buckets:
        raise TailsynthError(f"fusion.buckets must list shot buckets (many, medium, few), got {buckets!r}")
    out = [int(c["index"]) for c in classes if c["bucket"] in buckets]
    if not out:
        raise TailsynthError(f"fusion.buckets {buckets} selects no class; no class has that shot bucket")
    return out


def head_neighbours(maps: torch.Tensor, head: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Global positions (Q, k) of the ``k`` nearest head samples (euclidean on the flattened ``maps``,
    nearest first) of each sample in ``queries`` (global positions). ``head``: global positions of the
    head samples. Exact search in float64 (a copy of ``maps``: N·h·w·8 bytes), queries in chunks of
    256 against all head samples at once; ties are broken by the order of ``head``.
    """
    head, queries = np.asarray(head, dtype=np.int64), np.asarray(queries, dtype=np.int64)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise TailsynthError(f"fusion.knn.k must be a whole number >= 1, got {k!r}")
    if k > len(head):
        raise TailsynthError(f"fusion.knn.k = {k} is larger than the head set ({len(head)} samples); lower it")
    flat = maps.reshape(len(maps), -1).numpy().astype(np.float64)
    candidates = flat[head]
    local = (
        np.concatenate(
            [
                np.argsort(euclidean_distances(flat[queries[s : s + 256]], candidates), axis=1, kind="stable")[:, :k]
                for s in range(0, len(queries), 256)
            ]
        )
        if len(queries)
        else np.empty((0, k), dtype=np.int64)
    )
    return head[local]  # subset positions -> global positions


def check_threshold(value, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise TailsynthError(f"{param} must be a number in [0, 1], got {value!r}")
    return float(value)


def class_thresholds(mode: str, high: float, low: float, seed: int, target: int) -> tuple[float, float]:
    """(τ_h, τ_l) of a tail class: ``fixed`` gives (``high``, ``low``) (the paper's figure: 0.4, 0.4);
    ``random_per_class`` draws both from N(0.5, 0.1), clipped to [0, 1], once per class (the reference code)."""
    if mode == "fixed":
        return check_threshold(high, "fusion.thresholds.high"), check_threshold(low, "fusion.thresholds.low")
    if mode == "random_per_class":
        draw = np.random.default_rng(derive_seed(seed, "thresholds", target)).normal(0.5, 0.1, size=2)
        return tuple(float(v) for v in np.clip(draw, 0.0, 1.0))
    raise TailsynthError(f"fusion.thresholds.mode must be one of {', '.join(THRESHOLD_MODES)}, got {mode!r}")


def fusion_mask(
    tail_map: torch.Tensor, head_map: torch.Tensor, tau_h: float, tau_l: float, p_head: float, seed: int
) -> torch.Tensor:
    """Boolean (H, W), True where the fused sample takes the tail embedding.

    Tail where only ``tail_map > tau_h`` holds (the tail's salient region), head where only
    ``head_map < tau_l`` holds (the head's background); where both or neither hold, a per-position
    draw from ``seed`` takes the head with probability ``p_head``.
    """
    top, bottom = tail_map > tau_h, head_map < tau_l
    coin = torch.rand(tail_map.shape, generator=torch.Generator().manual_seed(int(seed))) >= p_head
    return torch.where(top ^ bottom, top, coin)


def plan_pairs(
    index: pd.DataFrame,
    maps: torch.Tensor,
    targets: list[int],
    *,
    per_class: int,
    k: int,
    seed: int,
    threshold_mode: str,
    high: float,
    low: float,
) -> pd.DataFrame:
    """One row per fused sample: ``per_class`` for each class in ``targets``.

    ``index`` is the latent index (``image``, ``label``; row i is global position i, which ``maps``
    shares). Row j of class c: tail sample = c's samples in a seeded order, cycled; head neighbour =
    one of its ``k`` nearest head samples, drawn from the row's seed; ``p_head`` ~ U(0, 1) per row.

    Multi-label ``index`` (``labels`` instead of ``label``): c's samples are those showing c, the head
    samples those showing no class of ``targets``, and each row also names both samples' label sets
    (``source_labels``, ``head_labels``); ``source_label`` is then c and ``head_label`` -1.
    """
    if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1:
        raise TailsynthError(f"fusion.per_class must be a whole number >= 1, got {per_class!r}")
    if "labels" in index:
        sets = [set(split_labels(v)) for v in index["labels"]]
        cells = [join_labels(v) for v in sets]
        head = np.flatnonzero([not (v & set(targets)) for v in sets])
    else:
        labels = index["label"].to_numpy()
        sets, head = None, np.flatnonzero(~np.isin(labels, targets))
    rows = []
    for c in targets:
        own = np.flatnonzero([c in v for v in sets]) if sets is not None else np.flatnonzero(labels == c)
        if not len(own):
            raise TailsynthError(f"tail class {c} has no encoded train sample to fuse")
        tau_h, tau_l = class_thresholds(threshold_mode, high, low, seed, c)
        order = own[np.random.default_rng(derive_seed(seed, "tail", c)).permutation(len(own))]
        neighbours = head_neighbours(maps, head, order, k)
        for j in range(per_class):
            row_seed = derive_seed(seed, "fusion", c, j)
            rng = np.random.default_rng(row_seed)
            t = j % len(order)
            h = int(neighbours[t, rng.integers(k)])
            tail_pos = int(order[t])
            row = {
                "target": c,
                "seed": row_seed,
                "tail_index": tail_pos,
                "head_index": h,
                "source_image": index["image"].iloc[tail_pos],
                "source_label": c if sets is not None else int(labels[tail_pos]),
                "head_image": index["image"].iloc[h],
                "head_label": -1 if sets is not None else int(labels[h]),
                "tau_h": tau_h,
                "tau_l": tau_l,
                "p_head": float(rng.uniform()),
            }
            if sets is not None:
                row |= {"source_labels": cells[tail_pos], "head_labels": cells[h]}
            rows.append(row)
    return pd.DataFrame(rows)


def fused_labels(pairs: pd.DataFrame, policy: str) -> pd.DataFrame:
    """``pairs`` (multi-label rows of :func:`plan_pairs` with their ``tail_share``) with the fused image's
    ``labels`` by ``policy``: ``tail``, the tail sample's label set; ``union``, the tail's and the head
    neighbour's; ``soft``, the union with ``soft_labels`` weights (``k=w`` cells joined by ``|``): a
    label's weight is the share of positions taken from a sample showing it, tail_share for the tail's,
    1 - tail_share for the head's, the larger where both show it.
    """
    out = pairs.copy()
    labels, soft = [], []
    for tail, head, share in zip(out["source_labels"], out["head_labels"], out["tail_share"], strict=True):
        t, h = set(split_labels(tail)), set(split_labels(head))
        chosen = t if policy == "tail" else t | h
        labels.append(join_labels(chosen))
        weights = {k: max(share if k in t else 0.0, 1 - share if k in h else 0.0) for k in sorted(chosen)}
        soft.append("|".join(f"{k}={w:.6g}" for k, w in weights.items()))
    out["labels"] = labels
    if policy == "soft":
        out["soft_labels"] = soft
    return out


def check_label_policy(policy: str, multilabel: bool) -> str:
    if policy not in LABEL_POLICIES:
        raise TailsynthError(f"fusion.labels must be one of {', '.join(LABEL_POLICIES)}, got {policy!r}")
    if policy != "tail" and not multilabel:
        raise TailsynthError(
            f"fusion.labels = {policy} gives an image two classes, which a single-label dataset cannot train on; "
            "use fusion.labels=tail (or a multi-label dataset)"
        )
    return policy


@torch.no_grad()
def fuse_latents(models, latents: torch.Tensor, maps: torch.Tensor, pairs: pd.DataFrame, batch_size: int):
    """Fused latents (N, c, h, w) float32 of the ``pairs`` rows and each row's tail share (fraction of
    positions from the tail). Rows go through S and D in fixed chunks of ``batch_size`` in plan order."""
    param = next(models.decoder.parameters())
    out, shares = [], []
    for start in range(0, len(pairs), batch_size):
        part = pairs.iloc[start : start + batch_size]
        t = torch.as_tensor(part["tail_index"].to_numpy(copy=True))
        h = torch.as_tensor(part["head_index"].to_numpy(copy=True))
        masks = torch.stack(
            [
                fusion_mask(maps[ti], maps[hi], r.tau_h, r.tau_l, r.p_head, r.seed)
                for ti, hi, r in zip(t.tolist(), h.tolist(), part.itertuples(), strict=True)
            ]
        )
        s_t = models.student(latents[t].to(param.device, param.dtype))
        s_h = models.student(latents[h].to(param.device, param.dtype))
        keep = masks[:, None].to(param.device)
        out.append(models.decoder(torch.where(keep, s_t, s_h)).float().cpu())
        shares.extend(masks.flatten(1).float().mean(1).tolist())
    return torch.cat(out), shares
