"""Adapter for mini-ImageNet / tiered-ImageNet split CSVs.

Layout: ``root/train.csv``, ``root/test.csv`` and optionally ``root/val.csv``, each with header
``filename,label`` (label = class id such as a WordNet id), and the images in
``root/images/<filename>`` or ``root/images/<label>/<filename>``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tailsynth.data.class_names import describe_classes
from tailsynth.data.manifest import resolve_inside
from tailsynth.data.prepare import Record, Scan
from tailsynth.errors import TailsynthError

SPLITS = ("train", "val", "test")
REQUIRED = ("train", "test")


def _inside(root: Path, relative: str, where: str) -> Path:
    try:
        return resolve_inside(root, relative)
    except TailsynthError:
        raise TailsynthError(
            f"data.root: {where} names {relative!r}, which points outside {root}; use a path relative to it"
        ) from None


def _read_split(csv_path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TailsynthError(f"data.root: {csv_path} is empty; it needs a header filename,label and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TailsynthError(f"data.root: cannot read {csv_path} as CSV: {exc}") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = {"filename", "label"} - set(df.columns)
    if missing:
        raise TailsynthError(
            f"data.root: {csv_path} lacks columns {sorted(missing)}; its header must be filename,label"
        )
    if df.empty:
        raise TailsynthError(f"data.root: {csv_path} has no rows; add filename,label rows or remove the file")
    df = df[["filename", "label"]].apply(lambda col: col.str.strip())
    for col in ("filename", "label"):
        empty = df.index[df[col] == ""]
        if len(empty):
            raise TailsynthError(f"data.root: {csv_path} row {empty[0] + 2} has an empty {col!r}; fill it in")
    return df


def scan_split_csvs(root: str | Path, *, images_dir: str = "images", class_names: str | Path | None = None) -> Scan:
    """Records and class descriptions of a mini-ImageNet style dataset.

    Class indices follow first appearance over train, val, test, so train's (base) classes come
    first and test-only (novel) classes last. Only train images form the generator's pool.
    ``class_names`` is an optional class-name file (see ``tailsynth.data.class_names``).
    """
    root = Path(root)
    if not root.is_dir():
        raise TailsynthError(f"data.root: dataset folder {root} not found; set data.root to the mini-ImageNet folder")
    images = _inside(root, images_dir, "the images folder")
    if not images.is_dir():
        raise TailsynthError(f"data.root: images folder {images} not found; put the images in {root}/{images_dir}/")
    ids: dict[str, int] = {}
    records: list[Record] = []
    seen: dict[Path, str] = {}
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file():
            if split in REQUIRED:
                raise TailsynthError(f"data.root: {csv_path} not found; the dataset needs {' and '.join(REQUIRED)}.csv")
            continue
        df = _read_split(csv_path)
        for i, (filename, label) in enumerate(zip(df["filename"], df["label"], strict=True)):
            where = f"row {i + 2} of {csv_path}"
            flat = _inside(images, filename, where)
            nested = _inside(images, f"{label}/{filename}", where)
            path = flat if flat.is_file() else nested if nested.is_file() else None
            if path is None:
                raise TailsynthError(f"data.root: image {filename!r} ({where}) not found at {flat} or {nested}")
            if path in seen:
                raise TailsynthError(f"data.root: image {path} ({where}) is listed twice (also in {seen[path]})")
            seen[path] = where
            label_index = ids.setdefault(label, len(ids))
            records.append(
                Record(key=f"{len(records):07d}", image=path, label=label_index, split=split, in_pool=split == "train")
            )
    class_ids = list(ids)
    names, prompt_names, superclasses = describe_classes(class_ids, class_names)
    return Scan(records, class_ids, names, prompt_names, superclasses)
