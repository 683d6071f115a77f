"""GeNIe and GeNIe-Ada (Koohpayegani et al. 2024): hard negatives from another class's image.

A source image of class S is noised to ratio r and denoised with the prompt of the target
class T; the result is labelled T. In long-tail mode the sources come from the classes most
confused with T. GeNIe-Ada picks r per (source, target) pair: the grid level just after the
largest jump of the generated image's embedding along the source→target direction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tailsynth.data.groups import row_prompts
from tailsynth.errors import TailsynthError
from tailsynth.methods.generated import check_noise_ratio, target_classes
from tailsynth.seeding import derive_seed


def confused_classes(confusion: np.ndarray, target: int, top_k: int) -> list[int]:
    """The ``top_k`` classes most confused with ``target``, most confused first.

    ``confusion[i, j]`` counts (or weighs) true class i predicted as j. It is read in *both*
    directions, ``confusion[t, s] + confusion[s, t]``: a tail class has a handful of train
    images, so its own row is nearly empty, while head images mistaken for it (the column)
    carry most of the evidence. Ties go to the lower class index.
    """
    k = confusion.shape[0]
    if not 1 <= top_k < k:
        raise TailsynthError(f"genie.top_k must be between 1 and {k - 1} (classes - 1), got {top_k}")
    score = confusion[target, :] + confusion[:, target]
    order = sorted((c for c in range(k) if c != target), key=lambda c: (-score[c], c))
    return order[:top_k]


def check_grid(grid: list[float], steps: int, steps_param: str = "genie.steps") -> list[float]:
    """A sorted copy of the Ada noise grid; clear errors for an empty grid or levels outside (0, 1]."""
    if not grid:
        raise TailsynthError("genie.ada.grid is empty; give at least two noise levels, e.g. [0.5, 0.6, 0.7, 0.8, 0.9]")
    if len(grid) < 2:
        raise TailsynthError("genie.ada.grid needs at least two levels (the first one can never be chosen)")
    for r in grid:
        check_noise_ratio(r, steps, param="genie.ada.grid levels", steps_param=steps_param)
    if len(set(grid)) != len(grid):
        raise TailsynthError(f"genie.ada.grid has repeated levels: {grid}")
    return sorted(float(r) for r in grid)


def plan_genie_long_tail(
    method: str,
    classes: list[dict],
    manifest: pd.DataFrame,
    confusion: np.ndarray,
    *,
    r: float | str,
    per_class: int,
    buckets: list[str],
    top_k: int,
    prompt_template: str,
    steps: int,
    cfg: float,
    scheduler: str,
    seed: int,
    source_hashes: dict[str, str] | None = None,
) -> list[dict]:
    """Rows for ``per_class`` GeNIe images of each target class in ``buckets``.

    Each row draws (seeded by method, target and index) a source class among the ``top_k``
    most confused with the target, then one of that class's train images. ``r`` is a noise
    ratio in (0, 1], or ``"ada"`` for rows whose ratio GeNIe-Ada chooses.
    """
    if r != "ada":
        check_noise_ratio(r, steps, param="genie.r", steps_param="genie.steps")
    if per_class < 1:
        raise TailsynthError(f"genie.per_class must be >= 1, got {per_class}")
    targets = target_classes(classes, buckets)
    if not targets:
        raise TailsynthError(f"genie.buckets {buckets} selects no class; no class has that shot bucket")
    train = manifest[manifest["split"] == "train"]
    by_class = {k: train.loc[train["label"] == k, "image"].tolist() for k in range(len(classes))}
    rows = []
    for c in targets:
        t = c["index"]
        candidates = [s for s in confused_classes(confusion, t, top_k) if by_class[s]]
        if not candidates:
            raise TailsynthError(f"no train image among the classes most confused with {c['name']!r}")
        for j, (prompt, group) in enumerate(row_prompts(prompt_template, c, manifest, per_class)):
            rng = np.random.default_rng(derive_seed(seed, method, t, j, "source"))
            s = candidates[int(rng.integers(len(candidates)))]
            src = by_class[s][int(rng.integers(len(by_class[s])))]
            rows.append(
                {
                    "method": method,
                    "mode": "img2img",
                    "target": t,
                    "label": t,
                    "source_image": src,
                    "source_label": s,
                    "source_hash": (source_hashes or {}).get(src, ""),
                    "r": r,
                    "steps": int(steps),
                    "cfg": float(cfg),
                    "scheduler": scheduler,
                    "seed": derive_seed(seed, method, t, j),
                    "prompt": prompt,
                }
                | ({} if group is None else {"group": group})
            )
    return rows


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, D) mean of the L2-normalised features of each class's images (zeros for an empty class)."""
    z = l2_normalize(features.float())
    protos = torch.zeros(num_classes, z.shape[1])
    protos.index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return protos / counts


def ada_projections(z_source: torch.Tensor, z_target: torch.Tensor, z_levels: torch.Tensor) -> torch.Tensor:
    """d_m = (z_m − z_S)·v/‖v‖ with v = z_T − z_S: how far each level moved toward the target.

    Shapes: ``z_source`` (N, D), ``z_target`` (N, D), ``z_levels`` (N, M, D) -> (N, M).
    All embeddings are expected L2-normalised (``z_target`` may be a prototype).
    """
    v = z_target - z_source
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("nmd,nd->nm", z_levels - z_source.unsqueeze(1), v)


def ada_choice(d: torch.Tensor) -> torch.Tensor:
    """Index of the level just after the largest jump |d_{m+1} − d_m|, per row of ``d`` (N, M).

    The first level can never be chosen; the jump from the source itself is not considered.
    """
    if d.shape[1] < 2:
        raise ValueError("need at least two levels")
    return torch.argmax((d[:, 1:] - d[:, :-1]).abs(), dim=1) + 1


class GenieAda:
    """Generate every grid level for a batch of (source, target) pairs and keep each pair's Ada choice.

    ``generate(batch, sources, r)`` returns (B, C, H, W) images in [0, 1] for the batch's rows
    at noise ratio ``r``; ``embed(images)`` returns (B, D) features of the embedding network f;
    ``prototypes`` (K, D) are the L2-normalised target prototypes. Each level is one call for
    the whole batch (shared batches), not one call per pair and level.
    """

    def __init__(self, generate, embed, prototypes: torch.Tensor, grid: list[float]):
        self.generate, self.embed, self.prototypes, self.grid = generate, embed, prototypes, list(grid)

    def __call__(self, batch: pd.DataFrame, sources: torch.Tensor) -> tuple[torch.Tensor, pd.DataFrame]:
        """(chosen images (B, C, H, W), per-row columns ``chosen_r`` and ``d_<r>`` for every level)."""
        levels = torch.stack([self.generate(batch, sources, r) for r in self.grid], dim=1)  # (B, M, C, H, W)
        b, m = levels.shape[:2]
        z_levels = l2_normalize(self.embed(levels.flatten(0, 1)).float()).view(b, m, -1)
        z_source = l2_normalize(self.embed(sources).float())
        z_target = self.prototypes[torch.as_tensor(batch["target"].to_numpy(dtype=np.int64, copy=True))]
        d = ada_projections(z_source, z_target, z_levels)
        choice = ada_choice(d)
        extras = pd.DataFrame({"chosen_r": [self.grid[i] for i in choice.tolist()]}, index=batch.index)
        for j, r in enumerate(self.grid):
            extras[f"d_{r:g}"] = d[:, j].tolist()
        return levels[torch.arange(b), choice], extras
