"""Few-shot mode: what each method adds to an episode's support set, in equal counts.

Every method adds (N−1)·K images per class to an N-way K-shot support:
- ``genie``: every support image of every *other* class in the episode is a source, denoised
  with the target's prompt at ratio r (Koohpayegani et al. 2024);
- ``genie_ada``: the same pairs at every level of the noise grid; Ada later keeps one level per
  pair (:func:`ada_choices`), given a shot count, because the target prototype depends on K;
- ``img2img``: each of the target's own support images gives N−1 images;
- ``txt2img``: (N−1)·K images from the prompt alone;
- ``weak``/``strong``/``cutmix``/``mixup``: N−1 augmented copies of each support image.

Rows carry ``min_shots``: the smallest K whose support contains the row's source, so the
K-shot set is the rows with ``min_shots <= K`` and one generation serves every shot count.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from tailsynth.data.class_names import prompt_for, uses_group
from tailsynth.errors import TailsynthError
from tailsynth.methods.augment import _beta, strong_transform, weak_transform
from tailsynth.methods.generated import check_noise_ratio
from tailsynth.methods.genie import ada_choice, ada_projections, l2_normalize
from tailsynth.seeding import derive_seed

KINDS = ("txt2img", "img2img", "genie")
AUGMENT_KINDS = ("none", "weak", "strong", "cutmix", "mixup")


def plan_episodic(
    method: str,
    kind: str,
    episodes: pd.DataFrame,
    classes: list[dict],
    *,
    levels: list[float],
    prompt_template: str,
    steps: int,
    cfg: float,
    scheduler: str,
    seed: int,
    source_hashes: dict[str, str] | None = None,
    class_groups: dict[int, list[str]] | None = None,
) -> list[dict]:
    """Plan rows for every episode's largest support (see the module docstring for the counts).

    ``levels`` holds the noise ratio of ``img2img``/``genie`` rows, or the whole grid for Ada
    (one row per level and pair, all with the pair's seed, so a level's image is exactly
    fixed-r GeNIe's). GeNIe seeds do not include ``method``: ``genie`` at r and Ada's level r
    give the same image. A prompt naming ``{group}`` needs ``class_groups`` ({class index: its
    contexts}, :func:`tailsynth.data.groups.class_groups`); each row's context is then drawn from
    its seed.
    """
    if kind not in KINDS:
        raise TailsynthError(f"unknown few-shot generation kind {kind!r}; use one of {', '.join(KINDS)}")
    for r in levels:
        check_noise_ratio(
            r, None if kind == "txt2img" else steps, param=f"noise ratio of {method}", steps_param="steps"
        )
    info = {c["index"]: c for c in classes}
    hashes = source_hashes or {}
    grouped = uses_group(prompt_template)
    if grouped and not class_groups:
        prompt_for(prompt_template, classes[0])  # the error for a prompt naming {group} without groups
    rows: list[dict] = []
    for e, ep in episodes.groupby("episode", sort=True):
        sup = ep[ep["role"] == "support"].sort_values(["way", "rank"])
        ways = int(ep["way"].max()) + 1
        kmax = int(sup["rank"].max()) + 1
        for t in sorted(set(sup["label"].astype(int))):
            common = {
                "method": method,
                "episode": int(e),
                "target": t,
                "label": t,
                "steps": int(steps),
                "cfg": float(cfg),
                "scheduler": scheduler,
                "prompt": "" if grouped else prompt_for(prompt_template, info[t]),
            }
            if kind == "txt2img":
                for k in range((ways - 1) * kmax):
                    rows.append(
                        {
                            **common,
                            "mode": "txt2img",
                            "source_image": "",
                            "source_label": -1,
                            "r": 1.0,
                            "seed": derive_seed(seed, method, e, t, k),
                            "min_shots": k // (ways - 1) + 1,
                        }
                    )
            elif kind == "img2img":
                own = sup[sup["label"] == t]
                for src, rank in zip(own["image"], own["rank"], strict=True):
                    for j in range(ways - 1):
                        rows.append(
                            {
                                **common,
                                "mode": "img2img",
                                "source_image": src,
                                "source_label": t,
                                "source_hash": hashes.get(src, ""),
                                "r": float(levels[0]),
                                "seed": derive_seed(seed, method, e, t, src, j),
                                "min_shots": int(rank) + 1,
                            }
                        )
            else:
                others = sup[sup["label"] != t]
                for src, s, rank in zip(others["image"], others["label"], others["rank"], strict=True):
                    pair_seed = derive_seed(seed, "genie", e, t, src)
                    for r in levels:
                        rows.append(
                            {
                                **common,
                                "mode": "img2img",
                                "source_image": src,
                                "source_label": int(s),
                                "source_hash": hashes.get(src, ""),
                                "r": float(r),
                                "seed": pair_seed,
                                "min_shots": int(rank) + 1,
                                "pair": f"{e}:{t}:{src}",
                            }
                        )
    if grouped:
        # A context of the target class drawn from the row's seed: rows that share a seed (GeNIe-Ada's
        # levels of a pair, fixed-r GeNIe's row of that pair) share it, so their images still match.
        for row in rows:
            groups = class_groups[row["target"]]
            row["group"] = groups[derive_seed(row["seed"], "group") % len(groups)]
            row["prompt"] = prompt_for(prompt_template, info[row["target"]], row["group"])
    return rows


def prototypes(
    features: dict[str, torch.Tensor], episodes: pd.DataFrame, shots: int
) -> dict[tuple[int, int], torch.Tensor]:
    """{(episode, class): mean of the L2-normalised features of its first ``shots`` support images}."""
    sup = episodes[(episodes["role"] == "support") & (episodes["rank"] < shots)]
    out = {}
    for (e, c), group in sup.groupby(["episode", "label"]):
        z = l2_normalize(torch.stack([features[i] for i in group["image"]]).float())
        out[(int(e), int(c))] = z.mean(0)
    return out


def ada_choices(
    rows: pd.DataFrame,
    level_features: torch.Tensor,
    source_features: dict[str, torch.Tensor],
    episodes: pd.DataFrame,
    shots: list[int],
) -> pd.DataFrame:
    """GeNIe-Ada's level for every (pair, shot count).

    ``rows`` are the finished Ada manifest (one row per pair and level, columns ``pair``,
    ``episode``, ``target``, ``source_image``, ``r``, ``min_shots``) and ``level_features``
    (len(rows), D) the embedding of each row's image. The target prototype is the mean of the
    L2-normalised features of the target's K support images. Returns one row per pair and K
    with ``min_shots <= K``: ``episode, shots, pair, target, chosen_r, image`` and ``d_<r>``.
    """
    rows = rows.reset_index(drop=True)
    grid = sorted(set(rows["r"].astype(float)))
    z = l2_normalize(level_features.float())
    out = []
    for k in shots:
        protos = prototypes(source_features, episodes, k)
        pairs = rows[rows["min_shots"] <= k]
        for pair, group in pairs.groupby("pair", sort=False):
            group = group.sort_values("r")
            if list(group["r"].astype(float)) != grid:
                raise TailsynthError(f"Ada pair {pair} lacks grid levels: has {list(group['r'])}, grid {grid}")
            first = group.iloc[0]
            z_s = l2_normalize(source_features[first["source_image"]].float()[None])
            z_t = protos[(int(first["episode"]), int(first["target"]))][None]
            d = ada_projections(z_s, z_t, z[torch.as_tensor(group.index.to_numpy(copy=True))][None])
            m = int(ada_choice(d)[0])
            rec = {
                "episode": int(first["episode"]),
                "shots": k,
                "pair": pair,
                "target": int(first["target"]),
                "chosen_r": grid[m],
                "image": group.iloc[m]["image"],
            }
            rec.update({f"d_{r:g}": float(v) for r, v in zip(grid, d[0].tolist(), strict=True)})
            out.append(rec)
    return pd.DataFrame(out)


def augmented_support(
    images: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    kind: str,
    *,
    copies: int,
    seed: int,
    alpha: float = 1.0,
    hflip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` augmented images per support image: (N·copies, C, H, W) and their labels.

    ``images`` (N, C, H, W) in [0, 1] with ``labels`` (N,) and ``names`` (N,) identifying each
    image: every copy is seeded by (``seed``, name, copy index), so an image's copies are the
    same whatever else is in the support. ``cutmix``/``mixup`` mix each image with another
    support image; the image keeps the larger share and its label (a hard label for the
    linear probe).
    """
    if kind not in AUGMENT_KINDS:
        raise TailsynthError(f"unknown few-shot augmentation {kind!r}; use one of {', '.join(AUGMENT_KINDS)}")
    if kind == "none" or copies < 1:
        return images[:0], labels[:0]
    weak = weak_transform(hflip)
    strong = strong_transform(hflip)
    out, out_labels = [], []
    for i, name in enumerate(names):
        for j in range(copies):
            gen = torch.Generator().manual_seed(derive_seed(seed, kind, name, j))
            x = (strong if kind == "strong" else weak)(images[i], gen)
            if kind in ("cutmix", "mixup") and len(images) > 1:
                partner = int(torch.randint(0, len(images) - 1, (), generator=gen))
                partner += partner >= i  # any support image but itself
                other = weak(images[partner], gen)
                lam = _beta(gen, alpha)
                lam = max(lam, 1 - lam)
                x = mix_images(x, other, lam, kind, gen)
            out.append(x)
            out_labels.append(labels[i])
    return torch.stack(out), torch.stack(out_labels)


def mix_images(x: torch.Tensor, other: torch.Tensor, lam: float, kind: str, gen: torch.Generator) -> torch.Tensor:
    """MixUp (convex blend) or CutMix (a box of area 1 − ``lam`` pasted from ``other``) of two (C, H, W)."""
    if kind == "mixup":
        return lam * x + (1 - lam) * other
    h, w = x.shape[-2:]
    bh, bw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    top = int(torch.randint(0, h - bh + 1, (), generator=gen))
    left = int(torch.randint(0, w - bw + 1, (), generator=gen))
    x = x.clone()
    x[:, top : top + bh, left : left + bw] = other[:, top : top + bh, left : left + bw]
    return x


def select_rows(manifest: pd.DataFrame, episode: int, shots: int) -> pd.DataFrame:
    """The rows of a generated set that extend one episode's ``shots``-shot support."""
    return manifest[(manifest["episode"] == episode) & (manifest["min_shots"] <= shots)]
