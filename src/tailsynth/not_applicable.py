"""Outputs of a stage that does not apply to the data (e.g. GeNIe on multi-label data).

DVC needs every declared output to exist after a stage runs, whatever the dataset, so such a stage
writes each of its outputs as a record of why it did not run; its consumers read the record
(:func:`reason`) and pass it on instead of failing on a missing file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from tailsynth.io import atomic_dir, atomic_write_bytes, atomic_write_text, write_json

MARKER = "not_applicable.json"  # inside a folder output
KEY = "not_applicable"  # a JSON output's key, a CSV output's one column


def write_not_applicable(outs: Iterable[str | Path], reason: str) -> None:
    """Write each of ``outs`` as a not-applicable record of ``reason``.

    A path without a suffix is a folder: it is replaced by one holding only :data:`MARKER`. A ``.json``
    file becomes ``{"not_applicable": reason}``, a ``.csv`` file one ``not_applicable`` column with
    the reason, a ``.png`` an image of the reason's text. Folders are written first, so a file listed
    inside one of them (a synthetic set's ``manifest.csv``) is kept. Each write is atomic.
    """
    outs = [Path(p) for p in outs]
    unknown = [str(p) for p in outs if p.suffix not in ("", ".json", ".csv", ".png")]
    if unknown:  # checked before anything is written
        raise ValueError(f"no not-applicable form for {', '.join(unknown)} (a folder, .json, .csv or .png)")
    for path in outs:
        if not path.suffix:
            with atomic_dir(path) as tmp:
                write_json(tmp / MARKER, {KEY: reason})
    for path in outs:
        if path.suffix == ".json":
            write_json(path, {KEY: reason})
        elif path.suffix == ".csv":
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([[KEY], [reason]])
            atomic_write_text(path, buf.getvalue())
        elif path.suffix == ".png":
            atomic_write_bytes(path, _text_png(f"not applicable: {reason}"))


def reason(path: str | Path) -> str | None:
    """The reason recorded by :func:`write_not_applicable` at ``path``, or None (a real output, or none)."""
    path = Path(path)
    if path.is_dir():
        path = path / MARKER
        if not path.is_file():
            return None
    if not path.is_file():
        return None
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data.get(KEY) if isinstance(data, dict) and set(data) == {KEY} else None
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        return rows[1][0] if len(rows) == 2 and rows[0] == [KEY] else None
    return None


def _text_png(text: str) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("L", (8 + 6 * len(text), 24), 255)
    ImageDraw.Draw(image).text((4, 6), text, fill=0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
