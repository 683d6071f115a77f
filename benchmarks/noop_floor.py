"""What a no-op `dvc repro` costs per stage and per dependency entry, on this machine, with this DVC.

    python benchmarks/noop_floor.py [--stages 1 35 70] [--deps 2 20] [--runs 5]

Builds throw-away DVC repositories in a temporary folder, each with N stages (``--stages``) that
depend on K small files each (``--deps``), name three keys of a copy of this project's params.yaml
(so that DVC parses a file of the real size once per stage, as it does here) and write one output.
After one `dvc repro` makes each repository current, it times ``--runs`` no-op `dvc repro` runs and
prints the medians, then fits

    no-op seconds = fixed + per_stage x N + per_entry x (N x (K + 1))

by least squares and prints the three coefficients and what they predict for this pipeline's stage
and entry counts (read from its dvc.yaml files) and for the same stages with no code dependencies.
It measures DVC, not tailsynth: the stage commands are `echo`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def make_repo(where: Path, stages: int, deps: int) -> None:
    """A git + DVC repository with ``stages`` echo stages of ``deps`` file dependencies each."""
    where.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=where, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=where, check=True)
    shutil.copy(ROOT / "params.yaml", where / "params.yaml")
    src = where / "src"
    src.mkdir()
    for k in range(deps):
        (src / f"m{k}.py").write_text(f"X = {k}\n")
    keys = ["generator.prompt", "synth.per_class", "eval.seeds"]
    lines = ["stages:"]
    for s in range(stages):
        lines += [f"  s{s}:", f"    cmd: echo {s} > out/s{s}.txt", "    deps:"]
        lines += [f"      - src/m{k}.py" for k in range(deps)]
        lines += ["    params:", *[f"      - {key}" for key in keys], "    outs:", f"      - out/s{s}.txt"]
    (where / "dvc.yaml").write_text("\n".join(lines) + "\n")
    (where / "out").mkdir()
    subprocess.run([DVC, "repro", "-q"], cwd=where, check=True)


def noop_seconds(repo: Path, runs: int) -> float:
    """Median wall seconds of ``runs`` no-op `dvc repro` runs (after one untimed warm-up)."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run([DVC, "repro"], cwd=repo, check=True, capture_output=True, text=True).stdout
        if i:
            times.append(time.perf_counter() - t0)
        if "Running stage" in out:
            raise SystemExit(f"{repo}: the no-op repro ran a stage")
    return statistics.median(times)


def pipeline_counts() -> tuple[int, int, int]:
    """(stages, dependency + output entries, code-file entries) of this project's pipeline."""
    from dvc.repo import Repo

    stages = list(Repo(str(ROOT)).index.stages)
    entries = sum(len(s.deps) + len(s.outs) for s in stages)
    code = sum(1 for s in stages for d in s.deps if str(d.def_path).startswith(("src/", "stages/")))
    return len(stages), entries, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 35, 70])
    ap.add_argument("--deps", type=int, nargs="+", default=[2, 20])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if args.runs < 1 or min(args.stages) < 1 or min(args.deps) < 0:
        raise SystemExit("--runs and --stages must be at least 1, --deps at least 0")
    rows = []
    with tempfile.TemporaryDirectory(prefix="noop_floor_") as tmp:
        for n in args.stages:
            for k in args.deps:
                repo = Path(tmp) / f"n{n}_k{k}"
                make_repo(repo, n, k)
                sec = noop_seconds(repo, args.runs)
                rows.append((n, k, sec))
                print(f"{n:4d} stages x {k:3d} deps: no-op median {sec:.2f} s", flush=True)
    a = np.array([[1.0, n, n * (k + 1)] for n, k, _ in rows])
    b = np.array([sec for *_, sec in rows])
    fixed, per_stage, per_entry = np.linalg.lstsq(a, b, rcond=None)[0]
    print(f"fit: fixed {fixed:.2f} s + {per_stage * 1000:.1f} ms per stage + {per_entry * 1000:.2f} ms per entry")
    n, entries, code = pipeline_counts()
    print(f"this pipeline: {n} stages, {entries} dependency/output entries ({code} of them code files)")
    print(f"predicted no-op: {fixed + per_stage * n + per_entry * entries:.2f} s as declared, "
          f"{fixed + per_stage * n + per_entry * (entries - code):.2f} s without any code dependency")  # fmt: skip


if __name__ == "__main__":
    main()
