"""One table comparing every method: ``summary.json``, ``summary.md`` and dvc plot tables."""

from __future__ import annotations

import math

import pandas as pd

from tailsynth.metrics.keys import level_from_key
from tailsynth.metrics.paired import paired_difference

ACC_COLUMNS = ("overall", "many", "medium", "few")
GROUP_COLUMNS = ("avg_group", "worst_group")  # datasets with groups (contexts) only
CRITERION_COLUMNS = ("criterion_loss", "criterion_entropy", "criterion_hardness")  # for the baseline classifier
SYNTH_COLUMNS = ("oracle_acc", "fd_oracle", "density", "coverage", "fid", *CRITERION_COLUMNS, "n_synthetic")


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """Flatten per-method evaluate metrics into one row per method (means and stds of accuracies)."""
    rows = []
    for method, m in results.items():
        row: dict = {"method": method}
        for col in ACC_COLUMNS:
            if col in m.get("acc", {}):
                row[f"acc_{col}"] = m["acc"][col]
                row[f"acc_{col}_std"] = m.get("acc_std", {}).get(col, 0.0)
        for col in GROUP_COLUMNS:
            if col in m:
                row[col], row[f"{col}_std"] = m[col], m.get(f"{col}_std", 0.0)
        for col in SYNTH_COLUMNS:
            if col in m:
                row[col] = m[col]
        rows.append(row)
    return rows


MAP_COLUMNS = ("overall", "many", "medium", "few", "head", "tail")  # multi-label: macro mAP (head/tail: see bucket_map)
MULTILABEL_SYNTH_COLUMNS = ("oracle_acc", "fd_oracle", "density", "coverage", "fid", "n_synthetic")


def multilabel_rows(results: dict[str, dict]) -> list[dict]:
    """Flatten per-method multi-label evaluate metrics into one row per method: ``map_<col>`` and
    ``map_<col>_std`` for each of :data:`MAP_COLUMNS` the method has, and its synthetic-set metrics."""
    rows = []
    for method, m in results.items():
        row: dict = {"method": method}
        for col in MAP_COLUMNS:
            if col in m["map"]:
                row[f"map_{col}"], row[f"map_{col}_std"] = m["map"][col], m["map_std"][col]
        row |= {c: m[c] for c in MULTILABEL_SYNTH_COLUMNS if c in m}
        rows.append(row)
    return rows


def multilabel_markdown(
    rows: list[dict],
    title: str,
    *,
    oracle: str = "oracle acc",
    unreliable: set[str] | frozenset = frozenset(),
) -> str:
    """A Markdown table of :func:`multilabel_rows`: macro mAP (%, mean ± std over seeds) per column of
    :data:`MAP_COLUMNS` present in any row, then the synthetic-set metrics; ``oracle`` and
    ``unreliable`` as in :func:`summary_markdown`."""
    cols = [c for c in MAP_COLUMNS if any(f"map_{c}" in r for r in rows)]
    head = ["method", *[f"mAP {c}" for c in cols], oracle, "fd_oracle", "density", "coverage", "FID", "n synthetic"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [method_cell(r["method"], unreliable)]
        cells += [_fmt(r.get(f"map_{c}"), r.get(f"map_{c}_std")) for c in cols]
        cells += [_fmt(r.get("oracle_acc")), _fmt(r.get("fd_oracle"), pct=False), _fmt(r.get("density"), pct=False)]
        cells += [_fmt(r.get("coverage")), _fmt(r.get("fid"), pct=False), str(r.get("n_synthetic", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def not_applicable_markdown(skipped: dict[str, str]) -> str:
    """A bullet list of what did not run on this data: ``{what: reason}`` (methods sharing a reason on one line)."""
    by_reason: dict[str, list[str]] = {}
    for what, why in skipped.items():
        by_reason.setdefault(why, []).append(what)
    lines = ["## Not applicable to this data", ""]
    lines += [f"- {', '.join(whats)}: {why}." for why, whats in by_reason.items()]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, std: float | None = None, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if pct:
        return f"{100 * value:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * value:.1f}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def oracle_header(oracle_test_acc: float | None, trusted: bool = True) -> str:
    """The oracle column's header with the oracle's own test accuracy next to it (flagged when too low)."""
    if oracle_test_acc is None:
        return "oracle acc"
    return f"oracle acc (oracle test {100 * oracle_test_acc:.1f}%{'' if trusted else ' ⚠ too low to trust'})"


def method_cell(method: str, unreliable: set[str] | frozenset = frozenset()) -> str:
    return f"{method} †" if method in unreliable else method


def summary_markdown(
    rows: list[dict],
    title: str = "Long-tail results",
    *,
    oracle: str = "oracle acc",
    unreliable: set[str] | frozenset = frozenset(),
) -> str:
    """A Markdown table: accuracies (%, mean ± std over seeds) and synthetic-set metrics (loss, entropy
    and hardness: the mean feedback criteria of the set for the baseline classifier).

    Average and worst-group accuracy columns follow the buckets when the rows have them. ``oracle``
    is the oracle column's header (see :func:`oracle_header`); methods in ``unreliable`` are marked
    with a dagger (the report explains it).
    """
    groups = [c for c in GROUP_COLUMNS if any(c in r for r in rows)]
    head = ["method", *[f"acc {c}" for c in ACC_COLUMNS], *[c.replace("_", " ") for c in groups]]
    head += [oracle, "fd_oracle", "density", "coverage", "FID", "loss", "entropy", "hardness", "n synthetic"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [method_cell(r["method"], unreliable)]
        cells += [_fmt(r.get(f"acc_{c}"), r.get(f"acc_{c}_std")) for c in ACC_COLUMNS]
        cells += [_fmt(r.get(c), r.get(f"{c}_std")) for c in groups]
        cells += [
            _fmt(r.get("oracle_acc")),
            _fmt(r.get("fd_oracle"), pct=False),
            _fmt(r.get("density"), pct=False),
            _fmt(r.get("coverage")),
            _fmt(r.get("fid"), pct=False),
            *[_fmt(r.get(c), pct=False) for c in CRITERION_COLUMNS],
            str(r.get("n_synthetic", 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_class_table(results: dict[str, dict], classes: list[dict], key: str = "per_class_acc") -> pd.DataFrame:
    """Wide table for the per-class dvc plot: a row per class (index order = head to tail), a column per method.

    ``key``: ``per_class_acc`` (single-label) or ``per_class_ap`` (multi-label; a class without a
    positive test image has no AP and its cell is empty).
    """
    table = pd.DataFrame({"class_index": [c["index"] for c in classes], "class": [c["name"] for c in classes]})
    for method, m in results.items():
        table[method] = [m[key].get(c["name"], float("nan")) for c in classes]
    return table


def bucket_table(results: dict[str, dict], key: str = "acc") -> pd.DataFrame:
    """Wide table for the by-bucket dvc plot: a row per bucket (overall, many, medium, few), a column per method
    (``key``: ``acc``, or ``map`` on multi-label data)."""
    present = [b for b in ACC_COLUMNS if all(b in m[key] for m in results.values())]
    table = pd.DataFrame({"bucket_index": range(len(present)), "bucket": present})
    for method, m in results.items():
        table[method] = [m[key][b] for b in present]
    return table


def fewshot_columns(result: dict, shots: list[int]) -> dict:
    """Flat summary keys of one few-shot result: ``fewshot_<K>shot`` and ``fewshot_<K>shot_ci95``."""
    row = {}
    for k in shots:
        entry = result.get(f"{k}shot", {})
        if "mean" in entry:
            row[f"fewshot_{k}shot"] = entry["mean"]
            if "ci95" in entry:
                row[f"fewshot_{k}shot_ci95"] = entry["ci95"]
    if "oracle_acc" in result:
        row["fewshot_oracle_acc"] = result["oracle_acc"]
    return row


def fewshot_markdown(
    results: dict[str, dict],
    shots: list[int],
    title: str,
    *,
    oracle: str = "oracle acc",
    unreliable: set[str] | frozenset = frozenset(),
) -> str:
    """Methods × shot counts: accuracy % (mean ± 95% CI over episodes), oracle accuracy and images added."""
    head = ["method", *[f"{k}-shot" for k in shots], oracle, "added per class"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        cells = [method_cell(method, unreliable)]
        cells += [_fmt(r[f"{k}shot"]["mean"], r[f"{k}shot"].get("ci95")) for k in shots]
        cells.append(_fmt(r.get("oracle_acc")))
        cells.append(" / ".join(str(r[f"{k}shot"].get("added_per_class", 0)) for k in shots))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_markdown(sweep: dict[str, dict], shots: list[int], oracle: str = "oracle acc") -> str:
    """The GeNIe noise sweep: oracle label accuracy and few-shot accuracy per noise ratio r."""
    head = ["r", oracle, *[f"{k}-shot" for k in shots]]
    lines = ["## GeNIe noise sweep (few-shot)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in sorted(sweep.values(), key=lambda e: e["r"]):
        cells = [f"{entry['r']:g}", _fmt(entry["oracle_acc"])]
        cells += [_fmt(entry[f"{k}shot"]["mean"], entry[f"{k}shot"].get("ci95")) for k in shots]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def omega_sweep_markdown(sweep: dict) -> str:
    """The feedback guidance step sweep (metrics/feedback_sweep.json): per omega, few-class and overall
    accuracy (mean ± std over seeds) and the set's mean criterion for the guiding classifier."""
    criterion = sweep["criterion"]
    lines = [
        f"## Feedback guidance step sweep (feedback_{criterion}'s plan at each omega)",
        "",
        f"| omega | acc few | acc overall | mean {criterion} | set |",
        "|---|---|---|---|---|",
    ]
    points = sorted((v for v in sweep.values() if isinstance(v, dict)), key=lambda v: v["omega"])
    for v in points:
        few = _fmt(v["acc"]["few"], v["acc_std"]["few"])
        overall = _fmt(v["acc"]["overall"], v["acc_std"]["overall"])
        lines.append(f"| {v['omega']:g} | {few} | {overall} | {v['criterion']:.3f} | {v['set']} |")
    return "\n".join(lines) + "\n"


def chosen_r_table(long_tail: list[float], fewshot: dict[str, dict]) -> pd.DataFrame:
    """GeNIe-Ada's chosen-r histogram: column ``count`` (long-tail rows) and ``<method>_<K>shot``.

    ``long_tail`` lists each long-tail row's chosen r; ``fewshot`` maps a method to its few-shot
    metrics, whose ``chosen_r`` holds counts per shot count keyed like ``"r60"`` (r = 0.6).
    Rows are the union of the r values, with 0 where a column never chose that level.
    """
    columns = {"count": pd.Series(long_tail, dtype=float).value_counts()}
    for method, result in fewshot.items():
        for k, counts in result.get("chosen_r", {}).items():
            columns[f"{method}_{k}"] = pd.Series({level_from_key(r): n for r, n in counts.items()}, dtype=float)
    return pd.concat(columns, axis=1).sort_index().fillna(0).astype(int).rename_axis("r").reset_index()


def paired_table(
    runs: dict[str, pd.DataFrame], columns: list[str], baselines: tuple[str, ...] = ("none", "txt2img")
) -> dict[str, dict[str, dict]]:
    """Paired differences of every method to each baseline, per column.

    ``runs[method]`` has one row per seed or episode (same order for every method: they share
    them) and the accuracy ``columns``. Returns ``{method: {"<column>_vs_<baseline>": paired_difference}}``;
    a method is not compared with itself.
    """
    out: dict[str, dict[str, dict]] = {}
    for method, table in runs.items():
        out[method] = {}
        for base in baselines:
            if base == method or base not in runs:
                continue
            if len(runs[base]) != len(table):
                raise ValueError(f"{method} has {len(table)} paired runs, {base} has {len(runs[base])}")
            for col in columns:
                out[method][f"{col}_vs_{base}"] = paired_difference(table[col], runs[base][col])
    return out


def _paired_cell(entry: dict | None) -> str:
    if entry is None:
        return "—"
    ci = "" if math.isnan(entry["ci"]) else f" ± {100 * entry['ci']:.1f}"
    return f"{100 * entry['diff']:+.1f}{ci} {entry['verdict']}"


def paired_markdown(
    paired: dict[str, dict[str, dict]], columns: list[str], baselines: tuple[str, ...], title: str
) -> str:
    """Markdown: per method, the paired difference (points, 95% t interval) and verdict against each baseline."""
    keys = [f"{c}_vs_{b}" for c in columns for b in baselines]
    head = ["method", *[k.replace("_vs_", " vs ") for k in keys]]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, entries in paired.items():
        lines.append("| " + " | ".join([method, *[_paired_cell(entries.get(k)) for k in keys]]) + " |")
    return "\n".join(lines) + "\n"
