"""Adapter for a CSV manifest with columns ``image``, ``label`` (class name or index) and ``split``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tailsynth.data.manifest import resolve_inside
from tailsynth.data.prepare import Record
from tailsynth.errors import TailsynthError


def scan_csv(csv_path: str | Path, root: str | Path | None = None) -> tuple[list[Record], list[str]]:
    """Records and class names from a CSV; image paths are relative to ``root`` (default: the CSV's folder).

    Class names are the sorted distinct labels; integer labels keep their numeric order.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TailsynthError(f"data.csv: file {csv_path} not found; set data.csv to the manifest path")
    root = Path(root) if root else csv_path.parent
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = {"image", "label", "split"} - set(df.columns)
    if missing:
        raise TailsynthError(f"data.csv: {csv_path} lacks columns {sorted(missing)} (needs image,label,split)")
    if df.empty:
        raise TailsynthError(f"data.csv: {csv_path} has no rows")
    df = df.apply(lambda col: col.str.strip())
    for col in ("image", "label", "split"):
        empty = df.index[df[col] == ""]
        if len(empty):
            raise TailsynthError(f"data.csv: {csv_path} row {empty[0] + 2} has an empty {col!r}")
    bad = sorted(set(df["split"]) - {"train", "val", "test"})
    if bad:
        raise TailsynthError(f"data.csv: {csv_path} has unknown split values {bad}; use train, val or test")
    labels = df["label"]
    if labels.str.fullmatch(r"\d+").all():
        labels = labels.astype(int).astype(str)  # "07" and "7" are one class, in numeric order
        names = [str(v) for v in sorted(set(labels.astype(int)))]
    else:
        names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    records = []
    for i, (image, label, split) in enumerate(zip(df["image"], labels, df["split"], strict=True)):
        path = resolve_inside(root, image)
        if not path.is_file():
            raise TailsynthError(f"data.csv: image {path} (row {i + 2} of {csv_path}) not found")
        records.append(Record(key=f"{i:07d}", image=path, label=index[label], split=split, in_pool=split != "test"))
    return records, names
