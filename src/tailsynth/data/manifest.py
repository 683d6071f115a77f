"""The prepared-dataset contract: ``images/…``, ``manifest.csv`` and ``classes.json``.

``manifest.csv`` columns: ``image`` (path relative to the folder), ``label`` (class index) or, for
multi-label data, ``labels`` (``|``-joined class indices, blank for none),
``split`` (``train``/``val``/``test``, or ``pool_only`` for images only in the generator's pool),
``in_pool`` (0/1), ``sha`` (digest of the image file, so the manifest stands for the whole folder)
and optional ``group``. ``classes.json`` lists, per class: index, name,
prompt name, train count (multi-label: train images showing the class) and shot bucket, plus ``id`` (e.g. a WordNet id) and ``superclass`` when the
source dataset has them.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import torch

from tailsynth.errors import TailsynthError
from tailsynth.io import read_json

MANIFEST = "manifest.csv"
CLASSES = "classes.json"
ORIGINALS = "originals.json"  # present when the images stay in the dataset root (data.keep_originals)
BUCKETS = ("many", "medium", "few")


def shot_bucket(train_count: int, many_above: int = 100, few_below: int = 20) -> str:
    """``many`` if count > ``many_above``, ``few`` if count < ``few_below``, else ``medium``."""
    if train_count > many_above:
        return "many"
    if train_count < few_below:
        return "few"
    return "medium"


def class_table(
    names: list[str],
    prompt_names: list[str],
    train_counts: list[int],
    many_above: int,
    few_below: int,
    *,
    superclasses: list[str | None] | None = None,
    ids: list[str] | None = None,
) -> list[dict]:
    """The ``classes.json`` records, one per class in index order.

    ``superclasses`` and ``ids`` (one per class) add ``superclass`` (null where unknown) and ``id`` keys.
    """
    if few_below > many_above + 1:
        raise TailsynthError(f"data.buckets: few ({few_below}) must not exceed many ({many_above}) + 1")
    for what, values in (("superclasses", superclasses), ("ids", ids)):
        if values is not None and len(values) != len(names):
            raise ValueError(f"{len(values)} {what} for {len(names)} classes")
    table = []
    for i, (name, prompt, n) in enumerate(zip(names, prompt_names, train_counts, strict=True)):
        row = {"index": i}
        if ids is not None:
            row["id"] = ids[i]
        row |= {"name": name, "prompt_name": prompt}
        if superclasses is not None:
            row["superclass"] = superclasses[i]
        row |= {"train_count": int(n), "bucket": shot_bucket(int(n), many_above, few_below)}
        table.append(row)
    return table


def resolve_inside(root: str | Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths and paths that climb out of ``root``.

    Confinement is by the path as written (normalised, no ``..`` above the root), not by where
    symlinks point: datasets are often laid out with symlinked class folders or files.
    """
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    parts = [p for p in rel.parts if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            break
    if rel.is_absolute() or PureWindowsPath(str(relative)).drive or depth < 0:
        raise TailsynthError(f"path {relative!r} in a manifest points outside its dataset root {root}")
    return Path(os.path.normpath(Path(root).absolute() / Path(*parts))) if parts else Path(root).absolute()


def join_labels(labels) -> str:
    """A ``labels`` cell: the sorted distinct class indices joined by ``|`` ("" for none)."""
    return "|".join(str(k) for k in sorted({int(k) for k in labels}))


def split_labels(cell) -> list[int]:
    """The class indices of a ``labels`` cell (as written by :func:`join_labels`, or as pandas read it)."""
    text = "" if cell is None or (isinstance(cell, float) and cell != cell) else str(cell)
    return [int(k) for k in text.split("|") if k != ""]


def read_manifest(folder: str | Path, *, multilabel: bool = False) -> pd.DataFrame:
    """Read and check ``folder/manifest.csv``.

    A multi-label manifest (a ``labels`` column) is refused unless ``multilabel``: only the stages that
    read targets through :mod:`tailsynth.data.targets` take multi-label data, so far.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise TailsynthError(f"{path} not found; run the prepare stage first (dvc repro prepare)")
    df = pd.read_csv(path, dtype={"image": str, "split": str, "labels": str})
    missing = {"image", "split", "in_pool", "sha"} - set(df.columns)
    if missing or not ({"label", "labels"} & set(df.columns)):
        raise TailsynthError(
            f"{path} lacks columns {sorted(missing) or ['label']}; re-run the prepare stage (dvc repro prepare)"
        )
    if "labels" in df.columns and not multilabel:
        raise TailsynthError(
            f"{path} is multi-label (a labels column): this stage takes single-label data (on multi-label data "
            "the GeNIe, feedback and few-shot stages write not-applicable outputs instead)"
        )
    return df


def is_multilabel(folder: str | Path) -> bool:
    """True when ``folder``'s prepared manifest is multi-label (it has a ``labels`` column)."""
    return "labels" in read_manifest(folder, multilabel=True).columns


def read_classes(folder: str | Path) -> list[dict]:
    path = Path(folder) / CLASSES
    if not path.is_file():
        raise TailsynthError(f"{path} not found; run the prepare stage first (dvc repro prepare)")
    return read_json(path)


def originals(folder: str | Path) -> dict | None:
    """``{"root", "size", "channels"}`` when ``folder``'s manifest points at the original files under
    ``root`` (read at ``size`` px on the fly), else None: the images are the folder's own resized copies."""
    path = Path(folder) / ORIGINALS
    return read_json(path) if path.is_file() else None


def image_paths(folder: str | Path, relative) -> list[Path]:
    """The files of manifest ``image`` cells: under ``folder``, or under the dataset root it keeps
    originals in (see :func:`originals`), and never outside it."""
    kept = originals(folder)
    root = kept["root"] if kept else folder
    return [resolve_inside(root, rel) for rel in relative]


def stored_size(folder: str | Path) -> int | None:
    """The size that ``folder``'s images must be resized to when read: the prepared size for originals kept
    in place, None for images already stored at it."""
    kept = originals(folder)
    return int(kept["size"]) if kept else None


def load_rows(folder: str | Path, rows: pd.DataFrame, channels: int | None = None) -> torch.Tensor:
    """Images of ``rows`` (relative to ``folder``, or to its kept originals' root) as uint8 (N, C, H, W)."""
    from tailsynth.data.images import load_image_uint8

    size = stored_size(folder)
    out = [load_image_uint8(path, size=size, channels=channels or 3) for path in image_paths(folder, rows["image"])]
    if not out:
        return torch.empty(0, channels or 3, 0, 0, dtype=torch.uint8)
    return torch.stack(out)


POOL = "pool"
SELECTIONS = (POOL, "train", "val", "test")


def select_rows(manifest: pd.DataFrame, selection: str | list[str], param: str = "split") -> pd.DataFrame:
    """The manifest rows a selection names: ``"pool"`` = every row with ``in_pool`` set (the generator's
    pool: train, val and pool-only images), ``"train"``/``"val"``/``"test"`` = the rows of that split;
    a list selects the union, in manifest order.

    ``param`` names the setting in the error for an unknown selection.
    """
    if isinstance(selection, list):
        keep = set().union(*(select_rows(manifest, s, param).index for s in selection))
        return manifest[manifest.index.isin(keep)]
    if selection == POOL:
        return manifest[manifest["in_pool"].astype(bool)]
    if selection not in SELECTIONS:
        raise TailsynthError(f"{param} must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    return manifest[manifest["split"] == selection]


def load_split(
    folder: str | Path, split: str | list[str], channels: int, param: str = "split"
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and int64 labels (N,) of the rows :func:`select_rows` picks for ``split``."""
    rows = select_rows(read_manifest(folder), split, param)
    labels = torch.from_numpy(rows["label"].to_numpy(dtype=np.int64, copy=True))
    return load_rows(folder, rows, channels), labels


def image_shape(folder: str | Path) -> tuple[int, int]:
    """(channels, size) of the prepared images: read from the first one, or from ``originals.json``."""
    from PIL import Image

    kept = originals(folder)
    if kept:
        return int(kept["channels"]), int(kept["size"])
    df = read_manifest(folder, multilabel=True)  # the images' shape, whatever their labels
    with Image.open(resolve_inside(folder, df["image"].iloc[0])) as im:
        return (1 if im.mode == "L" else 3), im.size[0]
