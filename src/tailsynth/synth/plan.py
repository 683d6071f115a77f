"""A generation plan: every row of a synthetic set, with its own seed, written before any image.

Row columns (the synthetic-set contract): ``image, label, method, target, source_image,
source_label, r, steps, seed`` plus ``prompt``, ``cfg``, ``key`` and method columns. ``key``
hashes everything that determines the image (the generator, the output format and the method's
key fields, see ``tailsynth.methods.registry``) and is part of the file name, so a changed plan
never reuses a stale image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text

PLAN = "plan.csv"
MANIFEST = "manifest.csv"


def row_key(row: dict, generator_id: str, fields: tuple[str, ...]) -> str:
    """A short hash of the generator's identity and the row ``fields`` that determine its image."""
    payload = json.dumps([generator_id, *[f"{f}={row.get(f, '')}" for f in fields]])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def finalize_rows(rows: list[dict], generator_id: str, key_fields: tuple[str, ...]) -> pd.DataFrame:
    """Number the rows, hash them and give each its image path; returns the plan table.

    ``generator_id`` identifies the weights, the numeric precision they run in and the output
    format (channels, size); ``key_fields`` are the method's row-key fields (its registry entry).
    """
    if not rows:
        raise TailsynthError("the generation plan is empty")
    out = []
    for i, row in enumerate(rows):
        row = {"row": i, **row}
        row["key"] = row_key(row, generator_id, key_fields)
        row["image"] = f"images/{int(row['target']):04d}/{i:06d}-{row['key']}.png"
        row.setdefault("label", int(row["target"]))
        out.append(row)
    df = pd.DataFrame(out)
    front = ["row", "image", "label", "method", "target", "source_image", "source_label", "r", "steps", "seed"]
    return df[[c for c in front if c in df.columns] + [c for c in df.columns if c not in front]]


def write_plan(plan: pd.DataFrame, folder: str | Path) -> None:
    atomic_write_text(Path(folder) / PLAN, plan.to_csv(index=False))


def read_plan(folder: str | Path) -> pd.DataFrame:
    path = Path(folder) / PLAN
    if not path.is_file():
        raise TailsynthError(f"{path} not found; the synth stage writes it before generating")
    return pd.read_csv(path, keep_default_na=False)


def read_synthetic(folder: str | Path, usable: bool = True) -> pd.DataFrame:
    """The finished manifest of a synthetic set (written once every planned image exists).

    With ``usable`` (the default), rows whose sample stayed NaN or black after its retry (``failed``
    = 1, see :func:`tailsynth.synth.runner.finish`) are left out: they are reported, never trained on.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise TailsynthError(f"{path} not found; run the synth stage for this method first")
    rows = pd.read_csv(path, keep_default_na=False)
    if usable and "failed" in rows:
        rows = rows[rows["failed"].astype(int) == 0].reset_index(drop=True)
    return rows


def read_complete_synthetic(folder: str | Path, stage: str) -> pd.DataFrame:
    """The whole manifest of a set whose every row is needed (few-shot episodes add fixed counts).

    A row whose sample failed its retry is an error naming the manifest and ``stage`` to re-run.
    """
    rows = read_synthetic(folder, usable=False)
    failed = int(rows["failed"].astype(int).sum()) if "failed" in rows else 0
    if failed:
        raise TailsynthError(
            f"{Path(folder) / MANIFEST}: {failed} samples stayed NaN or black after their retry (failed = 1) and "
            f"every episode needs its images; re-run {stage} with another seed (fewshot_synth.seed)"
        )
    return rows
