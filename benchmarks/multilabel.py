"""The multi-label comparison on digits_multilabel, measured in one run: mAP per method and per fusion label policy.

    python benchmarks/multilabel.py [--work DIR] [--set section.key=value ...]

Runs the stage scripts that take multi-label data, in order, in a work folder (default: a temporary
one) with this repository's params.yaml and ``data.dataset: digits_multilabel``: prepare, generator,
oracle, generator_eval, classifier; retrain and evaluate of the training-time methods; synth,
retrain and evaluate of txt2img and img2img; encode_latents, train_il_se, cams; then, for each label
policy of ``fusion.labels`` (tail, union, soft), fuse, synth_fusion, retrain and evaluate of
fusion_0step and fusion_5step. Each stage runs as ``python stages/<name>.py`` exactly as dvc.yaml
runs it (the few-shot, GeNIe and feedback stages take single-label data only and are not run).
Prints a Markdown table: macro mAP overall, head and tail (%, mean ± std over eval.seeds), the tail
mAP paired against none (points, 95% t interval), oracle_acc (the made-for label detected),
fd_oracle and the images added.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tailsynth.metrics.paired import paired_difference  # noqa: E402

TRAINING = ("none", "weak", "strong", "cutmix", "mixup")
GENERATED = ("txt2img", "img2img_low", "img2img_high")
FUSION = ("fusion_0step", "fusion_5step")
POLICIES = ("tail", "union", "soft")


def run(work: Path, *argv: str) -> float:
    env = {**os.environ, "TAILSYNTH_PARAMS": str(work / "params.yaml"), "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{argv[0]}.py"), *argv[1:]], cwd=work, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"stage {' '.join(argv)} failed with exit status {proc.returncode}")
    seconds = time.perf_counter() - t0
    print(f"{seconds:7.1f} s  {' '.join(argv)}", file=sys.stderr, flush=True)
    return seconds


def set_param(params: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = yaml.safe_load(value)


def evaluate_row(work: Path, method: str, label: str) -> dict:
    result = json.loads((work / "metrics/evaluate" / f"{method}.json").read_text())
    seeds = pd.read_csv(work / "metrics/evaluate" / f"{method}_seeds.csv")
    return {"label": label, "result": result, "seeds": seeds}


def cell(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def markdown(rows: list[dict]) -> str:
    base = next(r for r in rows if r["label"] == "none")["seeds"]
    head = "| method | mAP overall | mAP head | mAP tail | tail vs none | oracle acc | fd_oracle | n synthetic |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        res, m, s = r["result"], r["result"]["map"], r["result"]["map_std"]
        paired = "—"
        if r["label"] != "none":
            d = paired_difference(r["seeds"]["tail"], base["tail"])
            paired = f"{100 * d['diff']:+.1f} ± {100 * d['ci']:.1f} {d['verdict']}"
        cells = [r["label"], cell(m["overall"], s["overall"]), cell(m["head"], s["head"]), cell(m["tail"], s["tail"])]
        cells += [paired, cell(res["oracle_acc"]) if "oracle_acc" in res else "—"]
        cells += [f"{res['fd_oracle']:.3g}" if "fd_oracle" in res else "—", str(res.get("n_synthetic", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="work folder (kept); default: a temporary one, removed")
    ap.add_argument("--set", action="append", default=[], help="a param override, section.key=value")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="multilabel-"))
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["dataset"] = "digits_multilabel"
    for assignment in args.set:
        set_param(params, assignment)
    try:
        t0 = time.perf_counter()
        rows = []
        for policy in POLICIES:
            params["fusion"]["labels"] = policy
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            if policy == POLICIES[0]:
                for stage in ("prepare", "generator", "oracle", "generator_eval", "classifier"):
                    run(work, stage)
                for method in TRAINING:
                    run(work, "retrain", method)
                    run(work, "evaluate", method)
                    rows.append(evaluate_row(work, method, method))
                for method in GENERATED:
                    run(work, "synth", method)
                    run(work, "retrain", method)
                    run(work, "evaluate", method)
                    rows.append(evaluate_row(work, method, method))
                for stage in ("encode_latents", "train_il_se", "cams"):
                    run(work, stage)
            run(work, "fuse")
            for method in FUSION:
                shutil.rmtree(work / "data/synthetic" / method, ignore_errors=True)  # another policy's set
                run(work, "synth_fusion", method)
                run(work, "retrain", method)
                run(work, "evaluate", method)
                rows.append(evaluate_row(work, method, f"{method} ({policy})"))
        generator = json.loads((work / "metrics/generator.json").read_text())
        oracle = json.loads((work / "metrics/oracle.json").read_text())
        il = json.loads((work / "metrics/fusion/il.json").read_text())
        print(f"digits_multilabel, {time.perf_counter() - t0:.0f} s in all ({os.cpu_count()} cores)")
        print(f"oracle: test mAP {100 * oracle['test_map']:.1f}% (chance {100 * oracle['chance']:.1f}%)")
        print(
            f"generator: oracle top label = prompted label on {100 * generator['oracle_acc']:.1f}% of single-label "
            f"prompts (worst label {100 * generator['oracle_acc_min']:.1f}%)"
        )
        print(f"IL (final generation): {json.dumps({k: v for k, v in il.items() if not isinstance(v, dict)})}")
        print()
        print(markdown(rows))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
