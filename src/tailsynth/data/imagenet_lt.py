"""Adapter for ImageNet-LT split files: lines ``<image path> <integer label>``, paths relative to the root.

For example ``train/n01440764/n01440764_10026.JPEG 0`` in ``ImageNet_LT_train.txt``. The class id
is the WordNet id of the image's parent folder when it has one, else the label number.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from tailsynth.data.class_names import describe_classes
from tailsynth.data.manifest import resolve_inside
from tailsynth.data.prepare import Record, Scan
from tailsynth.errors import TailsynthError

SPLIT_FILES = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
REQUIRED = ("train", "test")
WNID = re.compile(r"n\d{8}")


def _split_files(root: Path, split_files: dict[str, str | None] | None) -> dict[str, Path]:
    """Split -> existing file. ``split_files`` overrides the default names (null drops a split); a file
    named there must exist, while the default val file may be absent."""
    if not isinstance(split_files, dict | None):
        raise TailsynthError(f"data.split_files must map split -> file name, got {split_files!r}")
    given = dict(split_files or {})
    unknown = sorted(set(given) - set(SPLIT_FILES))
    if unknown:
        raise TailsynthError(f"data.split_files: unknown splits {unknown}; use train, val and test")
    files = SPLIT_FILES | given
    missing = [s for s in REQUIRED if not files[s]]
    if missing:
        raise TailsynthError(f"data.split_files: no file for {missing}; name a file for each of train and test")
    out = {}
    for split, name in files.items():
        if not name:
            continue
        path = root / name  # an absolute name stays absolute: split files may live outside the root
        if path.is_file():
            out[split] = path
        elif split in given or split in REQUIRED:
            raise TailsynthError(
                f"data.split_files: {split} file {path} not found; put it in data.root or set data.split_files.{split}"
            )
    return out


def _parse(path: Path) -> list[tuple[int, str, int]]:
    """(line number, image path, label) of each non-blank line."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise TailsynthError(
                f"data.split_files: {path} line {n} {line.strip()!r} is not '<image path> <integer label>'"
            )
        out.append((n, parts[0], int(parts[1])))
    if not out:
        raise TailsynthError(f"data.split_files: {path} has no lines; expected '<image path> <integer label>' lines")
    return out


def scan_imagenet_lt(
    root: str | Path, *, split_files: dict[str, str] | None = None, class_names: str | Path | None = None
) -> Scan:
    """Records and class descriptions of an ImageNet-LT style dataset.

    ``split_files`` maps split -> file name (relative to ``root``; default ``ImageNet_LT_<split>.txt``,
    val optional). Class indices are the labels in sorted order (the labels themselves when they run
    0..K-1). Only train images form the generator's pool.
    """
    root = Path(root)
    if not root.is_dir():
        raise TailsynthError(f"data.root: dataset folder {root} not found; set data.root to the ImageNet folder")
    rows = []  # (split, where, image path, label)
    wnids: dict[int, tuple[str, str]] = {}  # label -> (wnid, where it was first seen)
    for split, file in _split_files(root, split_files).items():
        for n, rel, label in _parse(file):
            where = f"{file} line {n}"
            try:
                path = resolve_inside(root, rel)
            except TailsynthError:
                raise TailsynthError(
                    f"data.root: {where} names {rel!r}, which points outside {root}; use paths relative to it"
                ) from None
            if not path.is_file():
                raise TailsynthError(f"data.root: image {path} ({where}) not found")
            parent = PurePosixPath(rel.replace("\\", "/")).parent.name
            if WNID.fullmatch(parent):
                first = wnids.setdefault(label, (parent, where))
                if first[0] != parent:
                    raise TailsynthError(
                        f"data.split_files: label {label} is class {parent} at {where} "
                        f"but {first[0]} at {first[1]}; each label must be one class"
                    )
            rows.append((split, path, label))
    owners: dict[str, int] = {}
    for label, (wnid, where) in sorted(wnids.items()):
        other = owners.setdefault(wnid, label)
        if other != label:
            raise TailsynthError(f"data.split_files: class {wnid} has labels {other} and {label} ({where}); use one")
    labels = sorted({label for _, _, label in rows})
    index = {label: i for i, label in enumerate(labels)}
    records = [
        Record(key=f"{i:07d}", image=path, label=index[label], split=split, in_pool=split == "train")
        for i, (split, path, label) in enumerate(rows)
    ]
    ids = [wnids[label][0] if label in wnids else str(label) for label in labels]
    names, prompt_names, superclasses = describe_classes(ids, class_names)
    return Scan(records, ids, names, prompt_names, superclasses)
