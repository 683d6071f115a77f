"""Feedback-guided synthesis (Askari-Hemmat et al.): the plan of one ladder method.

The ladder's methods share everything but their one change (see their registry entries): the same
target classes and counts, the same per-row seeds and the same conditioning image for row j of
class k, so their synthetic sets differ row by row only in what the method changes. Rows record
the conditioning image (``cond_image``, a train image of the target class, and its digest), the
image embedding's noise level and dropout rate, and the guidance (criterion, ω, every and the
guiding classifier's digest ``guide``); rows of a method without that part carry ``""`` / 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tailsynth.data.groups import row_prompts
from tailsynth.errors import TailsynthError
from tailsynth.methods.generated import prompt_row, target_classes
from tailsynth.methods.registry import Method
from tailsynth.seeding import derive_seed

FILLS = ("same", "balance")


@dataclass(frozen=True)
class LadderSettings:
    """The ladder's shared knobs (params ``feedback.*``): ``noise_level`` of the image embedding (in
    [0, the pipeline's noising steps)), embedding ``dropout`` rate p in [0, 1), guidance step ``omega``
    and ``every``. A method uses only the parts its registry entry declares."""

    noise_level: int = 0
    dropout: float = 0.0
    omega: float = 0.0
    every: int = 1

    def check(self, max_noise_level: int | None = None) -> None:
        level = self.noise_level
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise TailsynthError(f"feedback.image.noise_level must be a whole number >= 0, got {level!r}")
        if max_noise_level is not None and level >= max_noise_level:
            raise TailsynthError(
                f"feedback.image.noise_level must be below {max_noise_level} (the generator's image noising steps), "
                f"got {level}"
            )
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
            raise TailsynthError(f"feedback.dropout.p must be a number in [0, 1), got {p!r}")


def fill_counts(classes: list[dict], *, fill: str, per_class: int, buckets: list[str]) -> dict[int, int]:
    """Images to generate per class index.

    ``same``: ``per_class`` for every class in ``buckets`` (the counts every generated method adds).
    ``balance``: every class topped up to the largest class's train count (the paper's setting;
    the largest class gets none, and ``per_class`` / ``buckets`` are not used).
    """
    if fill == "same":
        if per_class < 1:
            raise TailsynthError(f"feedback.per_class must be >= 1, got {per_class}")
        targets = target_classes(classes, buckets)
        if not targets:
            raise TailsynthError(f"feedback.buckets {buckets} selects no class; no class has that shot bucket")
        return {int(c["index"]): int(per_class) for c in targets}
    if fill == "balance":
        largest = max(int(c["train_count"]) for c in classes)
        return {int(c["index"]): largest - int(c["train_count"]) for c in classes if c["train_count"] < largest}
    raise TailsynthError(f"feedback.fill must be one of {', '.join(FILLS)}, got {fill!r}")


def plan_feedback(
    method: Method,
    classes: list[dict],
    manifest: pd.DataFrame,
    counts: dict[int, int],
    settings: LadderSettings,
    *,
    prompt_template: str,
    steps: int,
    cfg: float,
    scheduler: str,
    seed: int,
    image_hashes: dict[str, str],
    guide: str = "",
) -> list[dict]:
    """Rows for ``counts[k]`` images of each class k (``fill_counts``) of ladder ``method``.

    Row j of class k has the seed ``derive_seed(seed, "feedback", k, j)`` and, in methods with an
    image, the conditioning image ``order[j % n]`` of a seeded permutation of the class's n train
    images (``manifest`` rows), whatever the method: rows pair up across the ladder. ``guide``
    identifies the guiding classifier (weights) and enters the keys of guided rows. With ``{group}``
    in ``prompt_template``, rows get their class's contexts rarest first
    (:func:`tailsynth.data.groups.row_groups`) and condition on images of their own context when it
    has train images.
    """
    if method.generation != "unclip":
        raise TailsynthError(f"method {method.name!r} is not a feedback-ladder method")
    train = manifest[manifest["split"] == "train"]
    by_index = {int(c["index"]): c for c in classes}
    rows = []
    for k, n in counts.items():
        c = by_index[k]
        images = train.loc[train["label"] == k, "image"].tolist()
        if method.image and not images:
            raise TailsynthError(
                f"class {c['name']!r} has no train image to condition {method.name} on; "
                "drop it from feedback.buckets or add train images"
            )
        order = np.random.default_rng(derive_seed(seed, "feedback", k, "condition")).permutation(len(images))
        # Rows that name a context condition on the images of that context when it has any (a seeded
        # order of them, cycled), else on the class's order: the image should not contradict the prompt.
        cell_images, cell_used = {}, {}
        if "group" in train:
            own = train[train["label"] == k]
            for g, paths in own.groupby(own["group"].astype(str))["image"]:
                perm = np.random.default_rng(derive_seed(seed, "feedback", k, g, "condition")).permutation(len(paths))
                cell_images[g] = [paths.tolist()[i] for i in perm]
        for j, (prompt, group) in enumerate(row_prompts(prompt_template, c, manifest, n)):
            row = prompt_row(
                method.name,
                "unclip",
                k,
                seed=derive_seed(seed, "feedback", k, j),
                prompt=prompt,
                steps=steps,
                cfg=cfg,
                scheduler=scheduler,
            )
            row |= {
                "cond_image": "",
                "cond_hash": "",
                "noise_level": 0,
                "dropout": 0.0,
                "criterion": "",
                "omega": 0.0,
                "every": 0,
                "guide": "",
            }
            if group is not None:
                row["group"] = group
            if method.image:
                if group is not None and cell_images.get(group):
                    used = cell_used.get(group, 0)
                    cond, cell_used[group] = cell_images[group][used % len(cell_images[group])], used + 1
                else:
                    cond = images[order[j % len(images)]]
                row.update(cond_image=cond, cond_hash=image_hashes.get(cond, ""), noise_level=int(settings.noise_level))
            if method.dropout:
                row["dropout"] = float(settings.dropout)
            if method.criterion is not None:
                row.update(
                    criterion=method.criterion, omega=float(settings.omega), every=int(settings.every), guide=guide
                )
            rows.append(row)
    if not rows:
        raise TailsynthError(f"the plan of {method.name} is empty: feedback.fill selects no image to generate")
    return rows
