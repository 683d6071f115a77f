"""The prompt of each image: groups (contexts) of a dataset with a ``group`` column, which context each
synthetic image names, and the label sets of multi-label images.

Used when the prompt template names the context (``generator.prompt: "a photo of a {name}, {group}"``):
the generator learns each image with its own context's prompt, and every generated row is given a
context of its class, filling the rarest (class, context) cells of the train split first. A
multi-label image is learnt with a prompt naming every label it shows (see :func:`label_set_info`).
"""

from __future__ import annotations

import pandas as pd

from tailsynth.data.class_names import prompt_for, uses_group
from tailsynth.data.manifest import split_labels
from tailsynth.errors import TailsynthError


def _require_groups(manifest: pd.DataFrame) -> None:
    if "group" not in manifest:
        raise TailsynthError(
            "generator.prompt names {group} but the prepared manifest has no group column; use a dataset with "
            "contexts (digits_groups, nico_pp) or drop {group} from the prompt"
        )


def class_groups(manifest: pd.DataFrame) -> dict[int, list[str]]:
    """``{class index: its groups, sorted}`` over every split of ``manifest`` (a prepared manifest with a
    ``group`` column), so a context with test images but no train image still counts as one of its class's."""
    _require_groups(manifest)
    out: dict[int, list[str]] = {}
    for label, groups in manifest.groupby("label")["group"]:
        out[int(label)] = sorted(set(groups.astype(str)))
    return out


def fill_groups(train_counts: dict[str, int], n: int) -> list[str]:
    """The groups of ``n`` new rows of one class, given its real train images per group.

    Each row goes to the group with the fewest images so far (real plus the rows already given out),
    ties to the first group in sorted order, so the rarest contexts fill first and the class ends as
    balanced as ``n`` allows. Deterministic: no seed is involved.

    >>> fill_groups({"a": 3, "b": 0, "c": 1}, 4)
    ['b', 'b', 'c', 'b']
    """
    if not train_counts:
        raise TailsynthError("a class has no group to give its synthetic rows")
    counts = dict(sorted(train_counts.items()))
    out = []
    for _ in range(n):
        g = min(counts, key=lambda k: counts[k])  # first minimum in sorted order
        counts[g] += 1
        out.append(g)
    return out


def row_groups(manifest: pd.DataFrame, label: int, n: int) -> list[str]:
    """The groups of ``n`` synthetic rows of class ``label``: :func:`fill_groups` over the class's groups
    (as :func:`class_groups` gives them: every split) with their train-split counts."""
    _require_groups(manifest)
    own = manifest[manifest["label"] == label]
    train = own.loc[own["split"] == "train", "group"].astype(str)
    counts = {g: int((train == g).sum()) for g in sorted(set(own["group"].astype(str)))}
    return fill_groups(counts, n)


def row_prompts(template: str, class_info: dict, manifest: pd.DataFrame, n: int) -> list[tuple[str, str | None]]:
    """(prompt, group) of each of ``n`` synthetic rows of one class: with ``{group}`` in ``template``, the
    groups of :func:`row_groups` and their prompts; otherwise the class's one prompt and no group."""
    if not uses_group(template):
        return [(prompt_for(template, class_info), None)] * n
    return [(prompt_for(template, class_info, g), g) for g in row_groups(manifest, int(class_info["index"]), n)]


def label_set_info(classes: list[dict], labels: list[int]) -> dict:
    """A class-like record for a multi-label image's label set, whose ``prompt_name`` names every label in
    class order joined by "and" (labels 3 and 7 of the digits: "three and seven"), for :func:`prompt_for`."""
    chosen = [classes[k] for k in sorted(set(labels))]
    return {
        "name": " and ".join(c["name"] for c in chosen),
        "prompt_name": " and ".join(c["prompt_name"] for c in chosen),
    }


def _label_set_prompt(template: str, classes: list[dict], cell) -> str:
    # an image with no label (e.g. "No Finding" left implicit) is learnt with the empty, unconditional prompt
    labels = split_labels(cell)
    return prompt_for(template, label_set_info(classes, labels)) if labels else ""


def image_prompts(template: str, classes: list[dict], rows: pd.DataFrame) -> list[str]:
    """The prompt of each manifest row (``label`` and, when ``template`` names it, ``group``; or a
    multi-label row's ``labels``, all named): what the embedded generators learn each real image with."""
    if "labels" in rows:
        return [_label_set_prompt(template, classes, cell) for cell in rows["labels"]]
    if not uses_group(template):
        by_class = [prompt_for(template, c) for c in classes]
        return [by_class[int(y)] for y in rows["label"]]
    if "group" not in rows:
        prompt_for(template, classes[0])  # the error for a prompt naming {group} without groups
    return [prompt_for(template, classes[int(y)], str(g)) for y, g in zip(rows["label"], rows["group"], strict=True)]


def every_prompt(template: str, classes: list[dict], manifest: pd.DataFrame) -> list[str]:
    """Every prompt the pipeline can give the generator: one per class, or with ``{group}`` one per class
    and group of :func:`class_groups` (so a tokenizer built from them knows every word); on multi-label
    data, one per class and one per label set the manifest holds."""
    if "labels" in manifest:
        own = [prompt_for(template, c) for c in classes]
        sets = sorted({str(cell) for cell in manifest["labels"] if split_labels(cell)})
        return list(dict.fromkeys([*own, *(_label_set_prompt(template, classes, cell) for cell in sets)]))
    if not uses_group(template):
        return [prompt_for(template, c) for c in classes]
    groups = class_groups(manifest)
    return [prompt_for(template, c, g) for c in classes for g in groups.get(int(c["index"]), [])]
