"""Stage report: metrics/summary.{json,md}, dvc plot tables and a sample grid per generated method.

Every method is compared with ``none`` and ``txt2img`` on the seeds (long-tail) and episodes
(few-shot) they share: paired differences with a 95% t interval and a verdict. Oracle-based
metrics carry the oracle's own test accuracy; when the generator misses its own quality bar
(generator_eval) every generated row is marked unreliable, with the reason.
"""

from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.manifest import image_shape, is_multilabel, load_rows, read_classes, read_manifest
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, read_json, write_json
from tailsynth.methods import registry
from tailsynth.metrics.keys import level_from_key
from tailsynth.metrics.paired import BETTER, WORSE, paired_difference
from tailsynth.report.grid import save_class_grid
from tailsynth.report.summary import (
    bucket_table,
    chosen_r_table,
    fewshot_columns,
    fewshot_markdown,
    multilabel_markdown,
    multilabel_rows,
    not_applicable_markdown,
    omega_sweep_markdown,
    oracle_header,
    paired_markdown,
    paired_table,
    per_class_table,
    summary_markdown,
    summary_rows,
    sweep_markdown,
)
from tailsynth.synth.plan import read_synthetic

from _common import load_params, log, prepared_dir, stage

BASELINES = ("none", "txt2img")
LT_COLUMNS = ["few", "overall"]
ML_COLUMNS = ["tail", "head", "overall"]  # multi-label: paired mAP columns


def read_metrics(stage_name: str, methods: list[str], folder: str, suffix: str = ".json"):
    """{method: metrics/<folder>/<method><suffix>} for every method, or a clear error naming the missing stage."""
    out = {}
    for method in methods:
        path = Path("metrics") / folder / f"{method}{suffix}"
        if not path.is_file():
            raise TailsynthError(f"{path} not found; run {stage_name}@{method} first")
        out[method] = read_json(path) if suffix == ".json" else pd.read_csv(path)
    return out


def generator_verdict(g: dict) -> str | None:
    """Why generated rows are unreliable (the generator misses its generator_eval bar), or None."""
    reasons = []
    if g["oracle_acc"] < g["min_acc"]:
        reasons.append(f"mean {100 * g['oracle_acc']:.1f}% < {100 * g['min_acc']:.0f}%")
    if g["oracle_acc_min"] < g["min_class_acc"]:
        worst = min(g["oracle_acc_per_class"], key=g["oracle_acc_per_class"].get)
        reasons.append(f"class {worst!r} {100 * g['oracle_acc_min']:.1f}% < {100 * g['min_class_acc']:.0f}%")
    if not reasons:
        return None
    return "the generator's Txt2Img samples miss the generator_eval bar (oracle accuracy " + "; ".join(reasons) + ")"


def claim_lines(episodes: dict[str, pd.DataFrame], shots: list[int]) -> list[str]:
    """GeNIe's few-shot claims (Table 1 of the paper) checked on paired episodes."""
    lines = ["", "## GeNIe's few-shot claims, on these episodes (paired, 95%)", ""]
    checks = [("genie", "txt2img", "GeNIe > Txt2Img", BETTER), ("genie_ada", "genie", "GeNIe-Ada ≥ GeNIe", None)]
    for method, base, claim, want in checks:
        for k in shots:
            entry = paired_difference(episodes[method][f"{k}shot"], episodes[base][f"{k}shot"])
            if want == BETTER:
                found = "supported" if entry["verdict"] == BETTER else f"not shown ({entry['verdict']})"
            else:
                found = (
                    "contradicted (worse)" if entry["verdict"] == WORSE else f"not contradicted ({entry['verdict']})"
                )
            lines.append(
                f"- {claim}, {k}-shot: {100 * entry['diff']:+.1f} ± {100 * entry['ci']:.1f} points "
                f"over {entry['n']} episodes: {found}"
            )
    return lines


def conditioning_text(check: dict) -> str:
    """The dual-conditioned generator's conditioning check (generator_unclip_eval), one line per split."""
    lines = [
        "",
        "Dual-conditioned generator, swapped same-class pairs (oracle feature distance of a sample to its "
        "conditioning image vs to the other image of its pair):",
        "",
    ]
    for name, c in check.items():
        lines.append(
            f"- {name.replace('_', ' ')}: {c['d_cond']:.3f} vs {c['d_other']:.3f} (gap {c['gap']:+.3f}), "
            f"{100 * c['closer']:.1f}% of {c['n']} samples closer to their conditioning image, "
            f"oracle acc {100 * c['oracle_acc']:.1f}%"
        )
    return "\n".join(lines) + "\n"


def single_label_report(params: dict, folder: Path, classes: list[dict], lt_methods: list[str]):
    """The single-label report: (summary.md's text, evaluate results by method, few-shot results by method);
    writes metrics/summary.json."""
    fs_methods = registry.names(registry.FEWSHOT)
    results = read_metrics("evaluate", lt_methods, "evaluate")
    seeds = read_metrics("evaluate", lt_methods, "evaluate", "_seeds.csv")
    fewshot = read_metrics("fewshot_eval", fs_methods, "fewshot")
    episodes = read_metrics("fewshot_eval", fs_methods, "fewshot", "_episodes.csv")
    shots, f = params["fewshot"]["shots"], params["fewshot"]
    shot_columns = [f"{k}shot" for k in shots]

    oracle = read_json("metrics/oracle.json")
    trusted = oracle["test_acc"] >= params["report"]["min_oracle_test_acc"]
    header = oracle_header(oracle["test_acc"], trusted)
    g = read_json("metrics/generator.json")
    reason = generator_verdict(g)
    unreliable = {m.name for m in registry.methods(registry.LONG_TAIL) if m.generated} if reason else set()
    if reason:
        log.warning("generated rows are unreliable: %s", reason)

    # Worst-group and average-group accuracy are paired too, on datasets with groups.
    lt_columns = LT_COLUMNS + [c for c in ("worst_group", "avg_group") if c in seeds["none"].columns]
    paired_lt = paired_table(seeds, lt_columns, BASELINES)
    paired_fs = paired_table(episodes, shot_columns, BASELINES)
    # The many and medium classes against none: what a method's images cost the classes it does not fill.
    bucket_columns = [c for c in ("many", "medium") if c in seeds["none"] and seeds["none"][c].notna().all()]
    paired_buckets = paired_table(seeds, bucket_columns, ("none",))
    rows = summary_rows(results)
    # One table for every method: long-tail columns, few-shot columns and paired differences side by side.
    summary = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}
    for method, result in fewshot.items():
        summary.setdefault(method, {}).update(fewshot_columns(result, shots))
    for paired in (paired_lt, paired_buckets, paired_fs):
        for method, entries in paired.items():
            for key, e in entries.items():
                summary[method][f"paired_{key}"] = e["diff"]
                summary[method][f"paired_{key}_ci95"] = e["ci"]
    write_json("metrics/summary.json", summary)

    text = summary_markdown(rows, oracle=header, unreliable=unreliable)
    text += "\n" + paired_markdown(
        paired_lt,
        lt_columns,
        BASELINES,
        f"Long-tail, paired over {params['eval']['seeds']} seeds (accuracy difference in points, 95% t interval)",
    )
    if bucket_columns:
        text += "\n" + paired_markdown(
            paired_buckets,
            bucket_columns,
            ("none",),
            "Long-tail, the classes generation does not fill, paired against none (points, 95% t interval)",
        )
    text += "\n" + fewshot_markdown(
        fewshot,
        shots,
        f"Few-shot results ({f['ways']}-way, {f['episodes']} episodes, {f['queries']} queries per class; "
        "mean ± 95% CI)",
        oracle=header,
        unreliable=unreliable,
    )
    text += "\n" + paired_markdown(
        paired_fs,
        shot_columns,
        BASELINES,
        f"Few-shot, paired over {f['episodes']} episodes (accuracy difference in points, 95% t interval)",
    )
    text += "\n".join(claim_lines(episodes, shots)) + "\n"
    if Path("metrics/fewshot/r_sweep.json").is_file():
        text += "\n" + sweep_markdown(read_json("metrics/fewshot/r_sweep.json"), shots, oracle=header)
    for method, result in fewshot.items():
        for k, counts in result.get("chosen_r", {}).items():
            text += f"\n{method} {k} chosen r: " + ", ".join(f"{level_from_key(r):g}: {n}" for r, n in counts.items())
    text += "\n"
    text += (
        f"\nGenerator: oracle accuracy of its Txt2Img samples {100 * g['oracle_acc']:.1f}% "
        f"(worst class {100 * g['oracle_acc_min']:.1f}%).\n"
    )
    text += conditioning_text(read_json("metrics/generator_unclip.json"))
    text += "\n" + omega_sweep_markdown(read_json("metrics/feedback_sweep.json"))
    if reason:
        text += f"\n† unreliable: {reason}.\n"
    if not trusted:
        text += (
            f"\n⚠ The oracle's own test accuracy is {100 * oracle['test_acc']:.1f}% "
            f"(< report.min_oracle_test_acc {100 * params['report']['min_oracle_test_acc']:.0f}%): "
            "oracle acc, fd_oracle, density and coverage are not to be trusted.\n"
        )
    tested = set(read_manifest(folder).query("split == 'test'")["label"].astype(int))
    untested = [c["name"] for c in classes if c["index"] not in tested]
    if untested:
        text += f"\nClasses without test images (absent from per-class and bucket accuracy): {', '.join(untested)}.\n"
    buckets = ", ".join(f"{c['name']}={c['train_count']} ({c['bucket']})" for c in classes)
    text += f"\nTrain images per class: {buckets}.\n"
    return text, results, fewshot


def multilabel_report(params: dict, folder: Path, classes: list[dict], lt_methods: list[str], skipped: dict):
    """The multi-label report: (summary.md's text, evaluate results by method); writes metrics/summary.json.

    Macro mAP per method (overall, shot buckets, head, tail), paired over seeds against none and txt2img
    on tail, head and overall mAP; the methods and the few-shot comparison that do not apply, with why.
    """
    results = read_metrics("evaluate", lt_methods, "evaluate")
    seeds = read_metrics("evaluate", lt_methods, "evaluate", "_seeds.csv")
    oracle = read_json("metrics/oracle.json")
    trusted = oracle["test_map"] >= params["report"]["min_oracle_test_acc"]
    header = f"oracle acc (oracle test mAP {100 * oracle['test_map']:.1f}%{'' if trusted else ' ⚠ too low to trust'})"
    g = read_json("metrics/generator.json")
    reason = generator_verdict(g)
    unreliable = {m for m in lt_methods if registry.get(m).generated} if reason else set()
    paired = paired_table(seeds, ML_COLUMNS, BASELINES)
    rows = multilabel_rows(results)
    summary = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}
    for method, entries in paired.items():
        for key, e in entries.items():
            summary[method][f"paired_{key}"] = e["diff"]
            summary[method][f"paired_{key}_ci95"] = e["ci"]
    write_json("metrics/summary.json", summary)
    n = params["eval"]["seeds"]
    text = multilabel_markdown(
        rows,
        f"Multi-label long-tail results (macro mAP %, mean ± std over {n} seeds)",
        oracle=header,
        unreliable=unreliable,
    )
    text += "\n" + paired_markdown(
        paired, ML_COLUMNS, BASELINES, f"Multi-label, paired over {n} seeds (mAP difference in points, 95% t interval)"
    )
    fewshot_why = registry.not_applicable(True, mode=registry.FEWSHOT)
    text += "\n" + not_applicable_markdown({**skipped, "the few-shot comparison": fewshot_why})
    tail = [c["name"] for c in classes if c["bucket"] == "few"]
    text += (
        f"\nHead labels: every label outside the few bucket; tail labels: {', '.join(tail)}. "
        f"Oracle: test mAP {100 * oracle['test_map']:.1f}% (random scores: {100 * oracle['chance']:.1f}%). "
        f"Generator: the oracle's top label is the prompted one for {100 * g['oracle_acc']:.1f}% of its Txt2Img "
        f"samples (worst label {100 * g['oracle_acc_min']:.1f}%).\n"
    )
    if reason:
        text += f"\n† unreliable: {reason}.\n"
    if not trusted:
        text += (
            f"\n⚠ The oracle's own test mAP is {100 * oracle['test_map']:.1f}% "
            f"(< report.min_oracle_test_acc {100 * params['report']['min_oracle_test_acc']:.0f}%): "
            "oracle acc, fd_oracle, density and coverage are not to be trusted.\n"
        )
    counts = ", ".join(f"{c['name']}={c['train_count']} ({c['bucket']})" for c in classes)
    text += f"\nTrain images showing each label: {counts}.\n"
    return text, results


@stage
def main() -> None:
    params = load_params()
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    multilabel = is_multilabel(folder)
    skipped = {
        m.name: why
        for m in registry.methods(registry.LONG_TAIL)
        if (why := registry.not_applicable(multilabel, family=m.family))
    }
    lt_methods = [name for name in registry.names(registry.LONG_TAIL) if name not in skipped]
    if multilabel:
        text, results = multilabel_report(params, folder, classes, lt_methods, skipped)
        fewshot, key = {}, ("map", "per_class_ap")
    else:
        text, results, fewshot = single_label_report(params, folder, classes, lt_methods)
        key = ("acc", "per_class_acc")
    atomic_write_text("metrics/summary.md", text)
    methods = registry.names(registry.LONG_TAIL)

    plots = Path("metrics/plots")
    # Methods that do not apply keep their (empty) columns: the plots in dvc.yaml name every method.
    per_class = per_class_table(results, classes, key[1]).assign(**{m: float("nan") for m in skipped})
    by_bucket = bucket_table(results, key[0]).assign(**{m: float("nan") for m in skipped})
    atomic_write_text(plots / "per_class.csv", per_class[per_class.columns[:2].tolist() + methods].to_csv(index=False))
    atomic_write_text(plots / "by_bucket.csv", by_bucket[by_bucket.columns[:2].tolist() + methods].to_csv(index=False))
    samples = plots / "samples"
    chosen, grids = [], set()
    for m in registry.methods(registry.LONG_TAIL):
        if not m.generated or m.name in skipped:
            continue
        synthetic = m.synthetic_dir(registry.LONG_TAIL)
        rows_s = read_synthetic(synthetic)
        if m.ada:
            chosen += rows_s["chosen_r"].tolist()
        if len(rows_s):
            picked = rows_s.groupby("label", sort=True).head(8)
            images = load_rows(synthetic, picked, channels).float() / 255
            save_class_grid(images, torch.tensor(picked["label"].tolist()), samples / f"{m.name}.png")
            grids.add(f"{m.name}.png")
    for old in samples.glob("*.png"):
        if old.name not in grids:
            old.unlink()  # grids of methods no longer compared, removed once the new ones are written
    atomic_write_text(plots / "chosen_r.csv", chosen_r_table(chosen, fewshot).to_csv(index=False))
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
