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
is an error naming the file, row and column. An image may have no positive finding at all.
Only train images form the generator's pool.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tailsynth.data.manifest import resolve_inside
from tailsynth.data.prepare import Record, Scan
from tailsynth.errors import TailsynthError

DEFAULT_SPLIT_FILES = {"train": "train.csv", "val": "development.csv", "test": "test.csv"}
ID_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "split")
UNCERTAIN_POLICIES = ("zero", "one", "refuse")


def _split_files(root: Path, split_files: dict | None) -> dict[str, Path]:
    given = split_files or DEFAULT_SPLIT_FILES
    unknown = set(given) - {"train", "val", "test"}
    if unknown or not {"train", "test"} <= set(given):
        raise TailsynthError(
            f"data.split_files must map train and test (and optionally val) to label CSVs, got {sorted(given)}"
        )
    files = {}
    for split, name in given.items():
        path = root / name
        if not path.is_file():
            if split == "val" and split_files is None:
                continue  # the default development.csv is optional
            raise TailsynthError(f"data.split_files: {split} file {path} not found; set data.split_files.{split}")
        files[split] = path
    return files


def finding_values(column: pd.Series, *, uncertain: str, where: str) -> list[int]:
    """0/1 per row of one finding column (strings as read from the CSV), by the module's policy.

    ``where`` names the file and column in errors; rows are counted as in the file (header = row 1).
    """
    out = []
    for i, raw in enumerate(column):
        text = raw.strip()
        if text in ("", "0", "0.0"):
            out.append(0)
        elif text in ("1", "1.0"):
            out.append(1)
        elif text in ("-1", "-1.0"):
            if uncertain == "refuse":
                raise TailsynthError(
                    f"{where} row {i + 2} is -1 (uncertain); set data.uncertain to zero or one to train on it"
                )
            out.append(1 if uncertain == "one" else 0)
        else:
            raise TailsynthError(f"{where} row {i + 2} is {raw!r}; finding columns take 1, 0, -1 or blank")
    return out


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
    for split, file in _split_files(root, split_files).items():
        df = pd.read_csv(file, dtype=str, keep_default_na=False)
        if path_column not in df.columns:
            raise TailsynthError(
                f"{file} has no image path column {path_column!r}; set data.path_column (columns: "
                f"{', '.join(df.columns[:8])}{', ...' if len(df.columns) > 8 else ''})"
            )
        columns = [c for c in df.columns if c != path_column and c not in ID_COLUMNS]
        if findings is None:
            if not columns:
                raise TailsynthError(f"{file} has no finding columns besides {path_column} and the ids")
            findings = columns
        elif set(columns) != set(findings):
            raise TailsynthError(
                f"{file} lists findings {sorted(set(columns) ^ set(findings))} that the train file does not "
                "(or the reverse); every split file needs the same finding columns"
            )
        values = {c: finding_values(df[c], uncertain=uncertain, where=f"{file} column {c!r}") for c in findings}
        for i, rel in enumerate(df[path_column]):
            where = f"{file} row {i + 2}"
            if not rel.strip():
                raise TailsynthError(f"{where} has an empty {path_column!r}")
            try:
                path = resolve_inside(root, rel.strip())
            except TailsynthError:
                raise TailsynthError(
                    f"{where} names {rel!r}, which points outside {root}; use paths relative to it"
                ) from None
            if not path.is_file():
                raise TailsynthError(f"data.root: image {path} ({where}) not found")
            labels = tuple(k for k, c in enumerate(findings) if values[c][i])
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
