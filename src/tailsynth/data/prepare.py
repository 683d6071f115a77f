"""Write a prepared dataset folder from any adapter's records."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.images import encode_png, load_image, match_channels, resize_batch
from tailsynth.data.manifest import CLASSES, MANIFEST, class_table, join_labels, split_labels
from tailsynth.io import atomic_dir, atomic_write_bytes, sha, write_json


@dataclass
class Record:
    """One image of a source dataset. ``image`` is a (C, H, W) tensor in [0, 1] or a file path.

    ``labels``: the label indices of a multi-label image (possibly none, e.g. "No Finding" left
    out); ``label`` is then only where its file goes (its first label, or 0).
    """

    key: str
    image: torch.Tensor | Path
    label: int
    split: str
    in_pool: bool = False
    group: str | None = None
    extra: dict = field(default_factory=dict)
    labels: tuple[int, ...] | None = None


@dataclass
class Scan:
    """An adapter's result: the records and, per class in index order, id, name, prompt name and superclass."""

    records: list[Record]
    ids: list[str]
    names: list[str]
    prompt_names: list[str]
    superclasses: list[str | None]


def write_prepared(
    out_dir: str | Path,
    records: Iterable[Record],
    *,
    names: list[str],
    prompt_names: list[str],
    size: int,
    channels: int,
    many_above: int,
    few_below: int,
    progress: Callable[[int], None] | None = None,
    superclasses: list[str | None] | None = None,
    ids: list[str] | None = None,
) -> list[dict]:
    """Resize every record to ``size``×``size`` with ``channels`` channels and write the folder.

    The folder appears only when complete (it is built under a temporary name). Returns the
    class table written to ``classes.json`` (with ``superclass`` and ``id`` keys when those are given).
    Multi-label records (``labels`` set; all or none of them) give a ``labels`` column of
    ``|``-joined indices instead of ``label``, and a class's train count is the number of train
    images showing it.
    """
    rows = []
    multilabel = None
    with atomic_dir(out_dir) as tmp:
        for rec in records:
            img = rec.image if isinstance(rec.image, torch.Tensor) else load_image(rec.image, size, channels)
            if img.shape[-1] != size or img.shape[0] != channels:
                img = resize_batch(match_channels(img[None], channels), size)[0]
            rel = f"images/{rec.label:04d}/{rec.key}.png"
            data = encode_png(img)
            atomic_write_bytes(tmp / rel, data)
            # The content digest makes manifest.csv stand for the whole folder: stages depend on it alone.
            if multilabel is None:
                multilabel = rec.labels is not None
            elif multilabel != (rec.labels is not None):
                raise ValueError("records mix single-label and multi-label images")
            label = {"labels": join_labels(rec.labels)} if multilabel else {"label": rec.label}
            row = {"image": rel, **label, "split": rec.split, "in_pool": int(rec.in_pool), "sha": sha(data)}
            if rec.group is not None:
                row["group"] = rec.group
            rows.append(row)
            if progress is not None:
                progress(1)
        df = pd.DataFrame(rows)
        train = df[df["split"] == "train"]
        if multilabel:
            shown = [set(split_labels(v)) for v in train["labels"]]
            train_counts = [sum(k in s for s in shown) for k in range(len(names))]
        else:
            train_counts = [int((train["label"] == k).sum()) for k in range(len(names))]
        table = class_table(
            names, prompt_names, train_counts, many_above, few_below, superclasses=superclasses, ids=ids
        )
        df.to_csv(tmp / MANIFEST, index=False)
        write_json(tmp / CLASSES, table)
    return table
