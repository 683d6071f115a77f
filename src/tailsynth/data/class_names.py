"""Readable class names (and optional superclasses) for datasets whose labels are ids such as WordNet ids.

Formats of the class-name file (param ``data.class_names``):

- text lines ``<id><tab or spaces><name>``, as ImageNet's ``words.txt`` and ``LOC_synset_mapping.txt``;
- a CSV whose header has an id column (``wnid``, ``id`` or ``class``), ``name`` and optionally ``superclass``;
- JSON ``{id: name}`` or ``{id: {"name": ..., "superclass": ...}}``.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tailsynth.errors import TailsynthError

ID_COLUMNS = ("wnid", "id", "class")
WHERE = "data.class_names"


def read_class_names(path: str | Path) -> dict[str, dict]:
    """``{class id: {"name": str, "superclass": str | None}}`` read from a class-name file."""
    path = Path(path)
    if not path.is_file():
        raise TailsynthError(f"{WHERE}: file {path} not found; set {WHERE} to a class-name file or null")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        return _from_json(path, text)
    first = next((line for line in text.splitlines() if line.strip()), "")
    header = {h.strip().lower() for h in first.split(",")}
    if path.suffix.lower() == ".csv" or ("name" in header and header & set(ID_COLUMNS)):
        return _from_csv(path)
    return _from_lines(path, text)


def _entry(path: Path, where: str, cid: str, name: object, superclass: object = None) -> tuple[str, dict]:
    cid = str(cid).strip()
    name = name.strip() if isinstance(name, str) else ""
    if not cid or not name:
        raise TailsynthError(f"{WHERE}: {path} {where} needs a class id and a name")
    if superclass is not None and not isinstance(superclass, str):
        raise TailsynthError(f"{WHERE}: {path} {where} has a superclass that is not a string: {superclass!r}")
    return cid, {"name": name, "superclass": (superclass or "").strip() or None}


def _add(out: dict[str, dict], path: Path, where: str, cid: str, entry: dict) -> None:
    if cid in out and out[cid] != entry:
        raise TailsynthError(f"{WHERE}: {path} {where} gives class {cid!r} a second, different entry; keep one")
    out[cid] = entry


def _from_lines(path: Path, text: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise TailsynthError(
                f"{WHERE}: {path} line {n} {line!r} is not '<class id> <name>'; add the name after the id"
            )
        _add(out, path, f"line {n}", *_entry(path, f"line {n}", parts[0], parts[1]))
    if not out:
        raise TailsynthError(f"{WHERE}: {path} has no class names")
    return out


def _from_csv(path: Path) -> dict[str, dict]:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TailsynthError(f"{WHERE}: cannot read {path} as CSV: {exc}") from exc
    df.columns = [c.strip().lower() for c in df.columns]
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if id_col is None or "name" not in df.columns:
        raise TailsynthError(
            f"{WHERE}: {path} has columns {list(df.columns)}; it needs an id column "
            f"({', '.join(ID_COLUMNS)}) and 'name' (and optionally 'superclass')"
        )
    supers = df["superclass"] if "superclass" in df.columns else [None] * len(df)
    out: dict[str, dict] = {}
    for i, (cid, name, sup) in enumerate(zip(df[id_col], df["name"], supers, strict=True)):
        where = f"row {i + 2}"
        _add(out, path, where, *_entry(path, where, cid, name, sup))
    if not out:
        raise TailsynthError(f"{WHERE}: {path} has no rows")
    return out


def _from_json(path: Path, text: str) -> dict[str, dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TailsynthError(f"{WHERE}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise TailsynthError(f'{WHERE}: {path} must be a non-empty JSON object {{"<class id>": "<name>", ...}}')
    out: dict[str, dict] = {}
    for cid, value in data.items():
        where = f"entry {cid!r}"
        fields = (value.get("name"), value.get("superclass")) if isinstance(value, dict) else (value,)
        key, entry = _entry(path, where, cid, *fields)
        out[key] = entry
    return out


def names_for(ids: Sequence[str], mapping: dict[str, dict], path: str | Path) -> list[dict]:
    """The entries of ``mapping`` for ``ids``, in that order; an error names ``path`` and the first missing id."""
    for cid in ids:
        if cid not in mapping:
            raise TailsynthError(
                f"{WHERE}: {path} has no entry for class {cid!r}; add a line '{cid} <readable name>' "
                f"(or set {WHERE} to null to use the class ids as names)"
            )
    return [mapping[cid] for cid in ids]


def prompt_name(name: str) -> str:
    """The first synonym of a name (``"house finch, linnet, ..."`` -> ``"house finch"``), for prompts."""
    first = name.split(",")[0].strip().replace("_", " ")
    return first or name.strip()


def describe_classes(
    ids: Sequence[str], class_names: str | Path | None
) -> tuple[list[str], list[str], list[str | None]]:
    """(names, prompt names, superclasses) of ``ids`` from a class-name file, or the ids themselves without one.

    Names stay unique: ImageNet repeats some (two synsets are called "crane"), and results are keyed
    by class name, so a repeated name gets its id appended.
    """
    if class_names is None:
        return list(ids), [prompt_name(cid) for cid in ids], [None] * len(ids)
    entries = names_for(ids, read_class_names(class_names), class_names)
    names = [e["name"] for e in entries]
    counts = Counter(names)
    unique = [f"{n} ({cid})" if counts[n] > 1 else n for n, cid in zip(names, ids, strict=True)]
    return unique, [prompt_name(n) for n in names], [e["superclass"] for e in entries]


def prompt_fields(template: str) -> set[str]:
    """The field names of a prompt template, e.g. ``{"name", "group"}``."""
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise TailsynthError(f"generator.prompt {template!r} is not a valid template: {exc}") from exc


def uses_group(template: str) -> bool:
    """Whether the prompt template names the image's group (context), ``{group}``."""
    return "group" in prompt_fields(template)


def prompt_for(template: str, class_info: dict, group: str | None = None) -> str:
    """Fill the prompt template (param ``generator.prompt``) with a class's names.

    ``{name}`` is the class's prompt name; ``{superclass}`` needs a class with a known superclass;
    ``{group}`` needs ``group``, the image's context (datasets with a group column).
    """
    fields = prompt_fields(template)
    if "superclass" in fields and not class_info.get("superclass"):
        raise TailsynthError(
            f"generator.prompt {template!r} uses {{superclass}} but class {class_info.get('name')!r} has none; "
            "set data.class_names to a file with a superclass column, or drop {superclass} from the prompt"
        )
    if "group" in fields and not group:
        raise TailsynthError(
            f"generator.prompt {template!r} uses {{group}} but class {class_info.get('name')!r} has no group here "
            "(the dataset has no group column, or this use has no context); drop {group} from the prompt"
        )
    try:
        return template.format(
            name=class_info["prompt_name"], superclass=class_info.get("superclass") or "", group=group or ""
        )
    except (KeyError, IndexError) as exc:
        raise TailsynthError(
            f"generator.prompt {template!r} uses an unknown field {exc}; use {{name}}, {{superclass}} or {{group}}"
        ) from exc
