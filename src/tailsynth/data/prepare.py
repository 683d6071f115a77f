"""Write a prepared dataset folder from any adapter's records."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.images import encode_png, load_image, match_channels, resize_batch
from tailsynth.data.manifest import CLASSES, MANIFEST, class_table
from tailsynth.io import atomic_dir, atomic_write_bytes, sha, write_json


@dataclass
class Record:
    """One image of a source dataset. ``image`` is a (C, H, W) tensor in [0, 1] or a file path."""

    key: str
    image: torch.Tensor | Path
    label: int
    split: str
    in_pool: bool = False
    group: str | None = None
    extra: dict = field(default_factory=dict)


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
    """
    rows = []
    with atomic_dir(out_dir) as tmp:
        for rec in records:
            img = rec.image if isinstance(rec.image, torch.Tensor) else load_image(rec.image, size, channels)
            if img.shape[-1] != size or img.shape[0] != channels:
                img = resize_batch(match_channels(img[None], channels), size)[0]
            rel = f"images/{rec.label:04d}/{rec.key}.png"
            data = encode_png(img)
            atomic_write_bytes(tmp / rel, data)
            # The content digest makes manifest.csv stand for the whole folder: stages depend on it alone.
            row = {"image": rel, "label": rec.label, "split": rec.split, "in_pool": int(rec.in_pool), "sha": sha(data)}
            if rec.group is not None:
                row["group"] = rec.group
            rows.append(row)
            if progress is not None:
                progress(1)
        df = pd.DataFrame(rows)
        train_counts = [int(((df["split"] == "train") & (df["label"] == k)).sum()) for k in range(len(names))]
        table = class_table(
            names, prompt_names, train_counts, many_above, few_below, superclasses=superclasses, ids=ids
        )
        df.to_csv(tmp / MANIFEST, index=False)
        write_json(tmp / CLASSES, table)
    return table
