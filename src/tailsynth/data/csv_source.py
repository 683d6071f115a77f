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
    df = pd.read_csv(csv_path, dtype=str)
    missing = {"image", "label", "split"} - set(df.columns)
    if missing:
        raise TailsynthError(f"data.csv: {csv_path} lacks columns {sorted(missing)} (needs image,label,split)")
    bad = sorted(set(df["split"]) - {"train", "val", "test"})
    if bad:
        raise TailsynthError(f"data.csv: {csv_path} has unknown split values {bad}; use train, val or test")
    labels = df["label"].str.strip()
    if labels.str.fullmatch(r"\d+").all():
        names = [str(v) for v in sorted(set(labels.astype(int)))]
    else:
        names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    records = []
    for i, row in enumerate(df.itertuples(index=False)):
        path = resolve_inside(root, row.image)
        if not path.is_file():
            raise TailsynthError(f"data.csv: image {path} (row {i + 2} of {csv_path}) not found")
        label = index[str(int(row.label)) if str(row.label).strip().isdigit() else row.label.strip()]
        records.append(Record(key=f"{i:07d}", image=path, label=label, split=row.split, in_pool=row.split != "test"))
    return records, names
