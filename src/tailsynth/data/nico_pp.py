"""Adapter for NICO++-style data: ``root/<context>/<class>/*`` images; the group of an image is its context.

Splits come from split files when ``split_files`` names them (``{split: file}``, lines
``<context>/<class>/<image> [label]`` relative to the root; a trailing label is ignored, the class
is read from the path), else each (context, class) folder is shuffled (seeded) and split by the
val / test fractions. Classes are the sorted union of class folders over all contexts; train and
val images form the generator's pool.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from tailsynth.data.images import IMAGE_SUFFIXES
from tailsynth.data.manifest import resolve_inside
from tailsynth.data.prepare import Record
from tailsynth.errors import TailsynthError

SPLITS = ("train", "val", "test")


def _dirs(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _layout(root: Path) -> dict[tuple[str, str], list[Path]]:
    """(context, class) -> image files, checking the two folder levels."""
    if not root.is_dir():
        raise TailsynthError(f"data.root: dataset folder {root} not found; set data.root to the NICO++ folder")
    contexts = _dirs(root)
    if not contexts:
        raise TailsynthError(f"data.root: {root} has no context folders; NICO++ is laid out as root/<context>/<class>/")
    cells = {}
    for context in contexts:
        classes = _dirs(context)
        if not classes:
            raise TailsynthError(
                f"data.root: context folder {context} has no class folders; NICO++ is laid out as "
                "root/<context>/<class>/ (for root/<class>/ use data.dataset: imagefolder)"
            )
        for folder in classes:
            files = _images(folder)
            if not files:
                raise TailsynthError(f"class folder {folder} has no images; add images or remove the folder")
            cells[(context.name, folder.name)] = files
    return cells


def _from_split_files(root: Path, split_files: dict) -> list[tuple[Path, str, str, str]]:
    """(path, context, class, split) of every line of the split files."""
    unknown = sorted(set(split_files) - set(SPLITS))
    if unknown or "train" not in split_files or "test" not in split_files:
        raise TailsynthError(
            f"data.split_files must name a train and a test file (val optional), got splits {sorted(split_files)}"
        )
    out = []
    for split, name in split_files.items():
        file = root / name
        if not file.is_file():
            raise TailsynthError(f"data.split_files: {split} file {file} not found; put it in data.root or fix the name")
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            rel = line.split()[0]
            parts = PurePosixPath(rel.replace("\\", "/")).parts
            if len(parts) < 3:
                raise TailsynthError(f"data.split_files: {file} line {n} {rel!r} is not '<context>/<class>/<image>'")
            try:
                path = resolve_inside(root, rel)
            except TailsynthError:
                raise TailsynthError(f"data.split_files: {file} line {n} {rel!r} points outside {root}") from None
            if not path.is_file():
                raise TailsynthError(f"data.root: image {path} ({file} line {n}) not found")
            out.append((path, parts[-3], parts[-2], split))
    return out


def scan_nico_pp(
    root: str | Path,
    *,
    split_files: dict[str, str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[Record], list[str]]:
    """Records (with ``group`` = context) and sorted class names of a NICO++-style dataset."""
    root = Path(root)
    cells = _layout(root)
    if split_files:
        if not isinstance(split_files, dict):
            raise TailsynthError(f"data.split_files must map split -> file name, got {split_files!r}")
        assigned = _from_split_files(root, split_files)
    else:
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise TailsynthError("data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1")
        rng = np.random.default_rng(seed)
        assigned = []
        for (context, name), files in cells.items():
            n_test, n_val = round(len(files) * test_fraction), round(len(files) * val_fraction)
            for rank, i in enumerate(rng.permutation(len(files))):
                split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
                assigned.append((files[i], context, name, split))
    names = sorted({name for _, name in cells})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({name for _, _, name, _ in assigned} - set(index))
    if unknown:
        raise TailsynthError(f"data.split_files name classes with no folder under {root}: {unknown}")
    records = [
        Record(
            key=f"{i:07d}",
            image=path,
            label=index[name],
            split=split,
            in_pool=split in ("train", "val"),
            group=context,
        )
        for i, (path, context, name, split) in enumerate(assigned)
    ]
    return records, names
