"""Generated baselines: ``txt2img`` (pure text-to-image) and ``img2img`` from same-class images.

A method spec is its params section, e.g. ``{"mode": "txt2img"}`` or
``{"mode": "img2img", "r": 0.7}``. Plans give every target class in the chosen buckets the
same number of rows, so every generated method adds the same counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tailsynth.data.groups import row_prompts
from tailsynth.data.manifest import join_labels, split_labels
from tailsynth.data.targets import is_multilabel, shows_class
from tailsynth.errors import TailsynthError
from tailsynth.seeding import derive_seed

MODES = ("txt2img", "img2img")


def check_noise_ratio(r, steps: int | None, *, param: str, steps_param: str) -> float:
    """``r`` as a float; a clear error naming ``param`` when it is outside (0, 1] or, with
    ``steps`` (named ``steps_param``), when ⌊r·steps⌋ leaves no denoising step (img2img ``strength``)."""
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
        raise TailsynthError(f"{param} must be a number in (0, 1], got {r!r}")
    if steps is not None and int(r * steps) < 1:
        raise TailsynthError(f"{param} = {r} gives no denoising step with {steps_param} = {steps}")
    return float(r)


def check_spec(method: str, spec: dict, steps: int | None = None, steps_param: str = "synth.steps") -> None:
    """Raise a clear error for an unknown mode, an r outside (0, 1], or an r too small for ``steps``."""
    mode = spec.get("mode")
    if mode not in MODES:
        raise TailsynthError(f"synth.{method}.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "img2img":
        check_noise_ratio(spec.get("r"), steps, param=f"synth.{method}.r", steps_param=steps_param)


def target_classes(classes: list[dict], buckets: list[str]) -> list[dict]:
    """Classes whose shot bucket is in ``buckets``."""
    unknown = set(buckets) - {"many", "medium", "few"}
    if unknown:
        raise TailsynthError(f"synth.buckets has unknown buckets {sorted(unknown)}; use many, medium, few")
    return [c for c in classes if c["bucket"] in buckets]


def prompt_row(
    method: str, mode: str, target: int, *, seed: int, prompt: str, steps: int, cfg: float, scheduler: str
) -> dict:
    """A plan row of class ``target`` made from its ``prompt`` alone (no source image, r = 1); methods
    that start from a source image or add a condition update it."""
    return {
        "method": method,
        "mode": mode,
        "target": target,
        "label": target,
        "source_image": "",
        "source_label": -1,
        "r": 1.0,
        "steps": int(steps),
        "cfg": float(cfg),
        "scheduler": scheduler,
        "seed": seed,
        "prompt": prompt,
    }


def plan_generated(
    method: str,
    spec: dict,
    classes: list[dict],
    manifest: pd.DataFrame,
    *,
    per_class: int,
    buckets: list[str],
    prompt_template: str,
    steps: int,
    cfg: float,
    scheduler: str,
    seed: int,
    source_hashes: dict[str, str] | None = None,
) -> list[dict]:
    """Rows for ``per_class`` images of each target class.

    img2img sources are the target's own train images (``manifest`` rows), cycled in a seeded
    order; ``source_hashes`` maps a source path to a digest of its content (it enters the row
    key, so a changed dataset never reuses an image). Seeds derive from (``seed``, method,
    target, index within target).

    On multi-label data (a ``labels`` column) every row also gets ``labels``: the target alone for
    txt2img (its prompt names only the target), the source image's own label set for img2img (its
    sources are the train images showing the target, whose other labels the image keeps).
    """
    check_spec(method, spec, steps)
    if per_class < 1:
        raise TailsynthError(f"synth.per_class must be >= 1, got {per_class}")
    targets = target_classes(classes, buckets)
    if not targets:
        raise TailsynthError(f"synth.buckets {buckets} selects no class; no class has that shot bucket")
    rows = []
    train = manifest[manifest["split"] == "train"]
    multilabel = is_multilabel(manifest)
    label_sets = dict(zip(train["image"], train["labels"], strict=True)) if multilabel else {}
    for c in targets:
        k = c["index"]
        sources = train.loc[shows_class(train, k), "image"].tolist()
        if spec["mode"] == "img2img" and not sources:
            raise TailsynthError(f"class {c['name']!r} has no train image to use as img2img source")
        order = np.random.default_rng(derive_seed(seed, method, k, "sources")).permutation(len(sources))
        for j, (prompt, group) in enumerate(row_prompts(prompt_template, c, manifest, per_class)):
            row = prompt_row(
                method,
                spec["mode"],
                k,
                seed=derive_seed(seed, method, k, j),
                prompt=prompt,
                steps=steps,
                cfg=cfg,
                scheduler=scheduler,
            )
            if group is not None:
                row["group"] = group
            if spec["mode"] == "img2img":
                src = sources[order[j % len(sources)]]
                row.update(source_image=src, source_label=k, r=float(spec["r"]))
                row["source_hash"] = (source_hashes or {}).get(src, "")
            if multilabel:
                row["labels"] = join_labels(
                    split_labels(label_sets[row["source_image"]]) if row["source_image"] else [k]
                )
            rows.append(row)
    return rows
