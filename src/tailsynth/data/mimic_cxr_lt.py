"""Adapter for MIMIC-CXR-LT (the CXR-LT challenge's label files): multi-label chest X-rays.

One CSV per official split under the dataset root (``train.csv``, ``development.csv`` as val and
``test.csv`` by default; ``data.split_files`` overrides the names, val may be absent). Each row is
one image: the image path (``data.path_column``, default ``fpath``, relative to the root), some
identifier columns (``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition``, ``split``: never
labels) and one 0/1 column per finding. Every split file must list the same findings, in any
order; the classes are the findings in the train file's column order.

Some releases of the MIMIC-CXR labels also carry blanks (the report does not mention the finding)
and -1 (the finding is uncertain). The policy, chosen to match the usual CheXpert-style training:
a blank is 0 (not mentioned = absent); -1 follows ``data.uncertain``: ``zero`` (U-Zeros, the
default), ``one`` (U-Ones) or ``refuse`` (an error naming the first uncertain cell). Anything else
is an error naming the file, line and column. An image may have no positive finding at all.
Only train images form the generator's pool.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tailsynth.data.manifest import resolve_inside
from tailsynth.data.prepare import Record, Scan
from tailsynth.errors import TailsynthError

DEFAULT_SPLIT_FILES = {"train": "train.csv", "val": "development.csv", "test": "test.csv"}
ID_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "split")
UNCERTAIN_POLICIES = ("zero", "one", "refuse")
SPLITS = ("train", "val", "test")


def _split_files(root: Path, split_files: dict | None) -> dict[str, Path]:
    """Split -> existing label CSV, in the fixed order train, val, test (so record keys never depend
    on the order the params list the splits in)."""
    if split_files is not None and not isinstance(split_files, dict):
        raise TailsynthError(
            f"data.split_files must map train and test (and optionally val) to label CSVs, got {split_files!r}"
        )
    given = split_files or DEFAULT_SPLIT_FILES
    unknown = set(given) - set(SPLITS)
    if unknown or not {"train", "test"} <= set(given):
        raise TailsynthError(
            f"data.split_files must map train and test (and optionally val) to label CSVs, got {sorted(given)}"
        )
    files = {}
    for split in (s for s in SPLITS if s in given):
        name = given[split]
        if not isinstance(name, str) or not name.strip():
            raise TailsynthError(f"data.split_files.{split} must be a CSV file name under data.root, got {name!r}")
        path = root / name
        if not path.is_file():
            if split == "val" and split_files is None:
                continue  # the default development.csv is optional
            raise TailsynthError(f"data.split_files: {split} file {path} not found; set data.split_files.{split}")
        files[split] = path
    return files


def read_label_csv(file: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells)]) of one label CSV; ``line`` is the file line the row starts on.

    Python's csv module rather than pandas so that line numbers stay exact past blank lines and quoted
    line breaks, and so that every malformed file is a one-line error: not UTF-8, no header, an empty
    or repeated column name, a row with more or fewer cells than the header, no rows.
    """
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header = [c.strip() for c in next(reader, [])]
            while True:
                line = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                if cells:  # a blank line reads as []
                    rows.append((line, cells))
    except UnicodeDecodeError as exc:
        raise TailsynthError(f"{file} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise TailsynthError(f"{file} line {reader.line_num}: not valid CSV ({exc})") from None
    if not header:
        raise TailsynthError(f"{file} is empty; it needs a header (image path and finding columns) and rows")
    if "" in header:
        raise TailsynthError(f"{file} column {header.index('') + 1} of the header has no name; name every column")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise TailsynthError(f"{file} header repeats columns {repeated}; each column may appear once")
    for line, cells in rows:
        if len(cells) != len(header):
            raise TailsynthError(
                f"{file} line {line} has {len(cells)} cells but the header has {len(header)}; fix that row"
            )
    if not rows:
        raise TailsynthError(f"{file} has a header but no rows; add the images or drop the file from data.split_files")
    return header, rows


def finding_value(raw: str, *, uncertain: str, where: str) -> int:
    """0 or 1 for one finding cell by the module's policy; ``where`` names file, line and column in errors."""
    text = raw.strip()
    if text in ("", "0", "0.0"):
        return 0
    if text in ("1", "1.0"):
        return 1
    if text in ("-1", "-1.0"):
        if uncertain == "refuse":
            raise TailsynthError(f"{where} is -1 (uncertain); set data.uncertain to zero or one to train on it")
        return 1 if uncertain == "one" else 0
    raise TailsynthError(f"{where} is {raw!r}; finding columns take 1, 0, -1 or blank")


def scan_mimic_cxr_lt(
    root: str | Path,
    *,
    split_files: dict[str, str] | None = None,
    path_column: str = "fpath",
    uncertain: str = "zero",
) -> Scan:
    """Records (multi-label) and class descriptions of a CXR-LT layout under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise TailsynthError(f"data.root: dataset folder {root} not found; set data.root to the MIMIC-CXR-JPG folder")
    if uncertain not in UNCERTAIN_POLICIES:
        raise TailsynthError(f"data.uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    findings: list[str] | None = None
    records = []
    seen: dict[Path, str] = {}
    for split, file in _split_files(root, split_files).items():
        header, rows = read_label_csv(file)
        if path_column not in header:
            raise TailsynthError(
                f"{file} has no image path column {path_column!r}; set data.path_column (columns: "
                f"{', '.join(header[:8])}{', ...' if len(header) > 8 else ''})"
            )
        columns = [c for c in header if c != path_column and c not in ID_COLUMNS]
        if findings is None:
            if not columns:
                raise TailsynthError(f"{file} has no finding columns besides {path_column} and the ids")
            findings = columns
        elif set(columns) != set(findings):
            raise TailsynthError(
                f"{file} lists findings {sorted(set(columns) ^ set(findings))} that the train file does not "
                "(or the reverse); every split file needs the same finding columns"
            )
        path_at = header.index(path_column)
        finding_at = [header.index(c) for c in findings]
        for line, cells in rows:
            where = f"{file} line {line}"
            rel = cells[path_at].strip()
            if not rel:
                raise TailsynthError(f"{where} has an empty {path_column!r}; fill it in")
            try:
                path = resolve_inside(root, rel)
            except TailsynthError:
                raise TailsynthError(
                    f"{where} names {rel!r}, which points outside {root}; use paths relative to it"
                ) from None
            if not path.is_file():
                raise TailsynthError(f"data.root: image {path} ({where}) not found")
            if path in seen:
                raise TailsynthError(f"{where} lists {rel!r} again (also at {seen[path]}); list each image once")
            seen[path] = where
            labels = tuple(
                k
                for k, (c, at) in enumerate(zip(findings, finding_at, strict=True))
                if finding_value(cells[at], uncertain=uncertain, where=f"{where} column {c!r}")
            )
            records.append(
                Record(
                    key=f"{len(records):07d}",
                    image=path,
                    label=labels[0] if labels else 0,
                    split=split,
                    in_pool=split == "train",
                    labels=labels,
                )
            )
    prompt_names = [name.lower() for name in findings]
    return Scan(records, list(findings), list(findings), prompt_names, [None] * len(findings))
