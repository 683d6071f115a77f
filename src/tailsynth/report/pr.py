"""The pull-request report: what a change did to params, metrics, plots and sample grids.

Pure functions over what ``dvc params diff --json``, ``dvc metrics diff --json`` and two
revisions' plot files hold; ``ci/pr_report.py`` runs dvc and git and writes the Markdown.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

# Rows whose metric names contain these come first: few-class accuracy is what the methods are
# for, and worst-group accuracy is what feedback-guided synthesis reports.
HEADLINE = ("few", "worst")
# Spread columns (std, CI) explain a mean; they go below the means, in the full table.
SPREAD = ("std", "ci95", "_std")


def metric_rank(name: str) -> int:
    """0 for few-class / worst-group metrics, 1 for other means, 2 for spreads (std, ci95)."""
    low = name.lower()
    if any(low.endswith(s) or f"{s}." in low for s in SPREAD):
        return 2
    return 0 if any(h in low for h in HEADLINE) else 1


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def metric_rows(diff: Mapping[str, Mapping[str, Mapping]]) -> list[tuple[int, str, str, object, object, object]]:
    """(rank, file, metric, old, new, change) for every metric in a ``dvc metrics diff --json`` dict,
    headline metrics first, then by file and metric name."""
    rows = []
    for path, metrics in diff.items():
        for name, d in metrics.items():
            old, new = d.get("old"), d.get("new")
            change = d.get("diff")
            if change is None and isinstance(old, (int, float)) and isinstance(new, (int, float)):
                change = new - old
            rows.append((metric_rank(name), path, name, old, new, change))
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def signed(value, digits: int) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:+.{digits}f}"
    return fmt(value, digits)


def metrics_markdown(diff: Mapping, base: str, head: str, digits: int = 4) -> str:
    """Markdown tables of a metrics diff, rounded: few-class and worst-group rows first (always
    shown), the other means next, std / CI rows last, everything past the headline folded."""
    rows = metric_rows(diff)
    if not rows:
        return "No metric changed.\n"
    header = f"| file | metric | {base} | {head} | change |\n|---|---|---:|---:|---:|\n"

    def table(part) -> str:
        body = "".join(
            f"| {path} | {name} | {fmt(old, digits)} | {fmt(new, digits)} | {signed(change, digits)} |\n"
            for _, path, name, old, new, change in part
        )
        return header + body

    headline = [r for r in rows if r[0] == 0]
    rest = [r for r in rows if r[0] != 0]
    out = table(headline) if headline else "No few-class or worst-group metric changed.\n"
    if rest:
        out += f"\n<details><summary>{len(rest)} more changed metrics</summary>\n\n{table(rest)}\n</details>\n"
    return out


def flatten(node, prefix: str = "") -> dict[str, object]:
    """Dotted keys to leaf values (lists are leaves), as ``dvc params diff`` names them."""
    if isinstance(node, Mapping):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def params_diff(old: Mapping | None, new: Mapping | None) -> dict[str, dict[str, object]]:
    """{param: {"old", "new"}} for every leaf that differs between two parsed params files.

    Done here rather than with ``dvc params diff``: dvc 3.67 merges the values of a param that
    several stages declare, so a list param such as ``fewshot.shots`` came out doubled.
    """
    a, b = flatten(old or {}), flatten(new or {})
    return {k: {"old": a.get(k), "new": b.get(k)} for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def params_markdown(diff: Mapping[str, Mapping[str, Mapping]], base: str, head: str) -> str:
    """A table of a ``dvc params diff --json`` dict ({file: {param: {old, new}}})."""
    rows = [(path, name, d.get("old"), d.get("new")) for path, params in diff.items() for name, d in params.items()]
    if not rows:
        return "No param changed.\n"
    shown = lambda v: "—" if v is None else str(v)  # noqa: E731  (params as written, not rounded)
    body = "".join(f"| {name} | {shown(old)} | {shown(new)} |\n" for _, name, old, new in sorted(rows))
    return f"| param | {base} | {head} |\n|---|---|---|\n" + body


def plot_definitions(dvc_yaml: Mapping) -> tuple[list[dict], list[str]]:
    """(CSV plots, image paths) declared in a dvc.yaml's top-level ``plots``.

    A CSV plot is ``{"title", "x", "files": {csv: [columns]}}``; image paths are PNG files or
    folders of PNGs.
    """
    tables, images = [], []
    for entry in dvc_yaml.get("plots", []) or []:
        if isinstance(entry, str):
            images.append(entry)
            continue
        for title, spec in entry.items():
            ys = spec.get("y", {})
            files = {f: [c] if isinstance(c, str) else list(c) for f, c in ys.items()}
            tables.append({"title": title, "x": spec.get("x"), "files": files})
    return tables, images


def render_plot(title: str, x: str, columns: list[str], base: pd.DataFrame | None, head: pd.DataFrame | None) -> bytes:
    """A PNG with the plot's columns against ``x``, the base revision dashed and the head solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for frame, style, tag in ((base, "--", "base"), (head, "-", "head")):
        if frame is None:
            continue
        xs = frame[x] if x in frame else pd.Series(range(len(frame)))
        for i, col in enumerate(columns):
            if col in frame:
                ax.plot(xs, frame[col], style, color=f"C{i % 10}", label=f"{col} ({tag})")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(x or "")
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def changed_columns(columns: list[str], base: pd.DataFrame | None, head: pd.DataFrame | None) -> list[str]:
    """The plotted columns whose values differ between the two sides (all of them if none can be paired)."""
    if base is None or head is None or len(base) != len(head):
        return columns
    differ = [c for c in columns if c not in base or c not in head or not base[c].equals(head[c])]
    return differ or columns


def read_csv_bytes(data: bytes | None) -> pd.DataFrame | None:
    return None if data is None else pd.read_csv(io.BytesIO(data))


def slug(path: str) -> str:
    return str(Path(path)).replace("/", "__")
