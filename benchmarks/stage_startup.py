"""What a cold `dvc repro` pays before any stage does work: interpreter start plus imports, per stage.

    python benchmarks/stage_startup.py [--repeats 3] [--warm]

For every stage script that the pipeline runs, it times ``python -X importtime -c "import <script>"``
(run from stages/, as the stage command does, ``repeats`` times, median) and reads from the same
output how much of it is ``torch`` alone. The pipeline's stages are read through DVC's own index, so
foreach stages count once per item. The total is the startup a cold run pays in sequence (DVC runs
one stage at a time); compare it with the cold run's wall time from ``profile_repro.py``.

``--warm`` also times each script's start under :mod:`tailsynth.warm` (what ``make run`` uses: the
stage forked from an interpreter that has already imported the heavy libraries), from the shim's
start to its exit, against the same script started as a fresh interpreter, and prints the ratio.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_scripts() -> Counter:
    """How many pipeline stages run each ``stages/<name>.py``, from DVC's index of every dvc.yaml."""
    from dvc.repo import Repo

    counts: Counter = Counter()
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            match = re.search(r"stages/(\w+)\.py", stage.cmd or "")
            if match:
                counts[match.group(1)] += 1
    return counts


def import_seconds(module: str) -> tuple[float, float]:
    """(wall seconds of a fresh interpreter importing ``module``, torch's cumulative import seconds in it)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT / "stages",
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    torch_us = 0
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == "torch":
            torch_us = int(parts[1])
    return wall, torch_us / 1e6


def start_seconds(python: str, script: str, work: Path) -> float:
    """Wall seconds of ``python stages/import_<script>.py`` in ``work``: start, import the stage, exit."""
    start = time.perf_counter()
    subprocess.run([python, f"stages/import_{script}.py"], cwd=work, check=True, capture_output=True)
    return time.perf_counter() - start


def warm_comparison(counts: Counter, repeats: int) -> None:
    """Each script's start as a fresh interpreter and under tailsynth.warm (medians), summed per stage."""
    from tailsynth.warm import WarmServer

    work = Path(tempfile.mkdtemp(prefix="tailsynth-startup-"))
    (work / "stages").mkdir()
    for script in counts:  # a stage command's shape (python stages/x.py), importing the real script
        body = f"import sys\nsys.path.insert(0, {str(ROOT / 'stages')!r})\nimport {script}\n"
        (work / "stages" / f"import_{script}.py").write_text(body)
    server = WarmServer()
    reason = server.start(real=sys.executable)
    if reason is not None:
        raise SystemExit(f"tailsynth.warm cannot run here: {reason}")
    shim = str(server.folder / "python")
    try:
        print(f"\n{'script':<24}{'stages':>7}{'fresh s':>9}{'warm s':>8}")
        fresh_total = warm_total = 0.0
        for script, n in sorted(counts.items()):
            fresh = statistics.median(start_seconds(sys.executable, script, work) for _ in range(repeats))
            warm = statistics.median(start_seconds(shim, script, work) for _ in range(repeats))
            fresh_total += n * fresh
            warm_total += n * warm
            print(f"{script:<24}{n:>7}{fresh:>9.2f}{warm:>8.2f}")
        stages = sum(counts.values())
        print(
            f"{stages} stages: {fresh_total:.0f} s of startup as fresh interpreters, {warm_total:.0f} s under "
            f"tailsynth.warm: {fresh_total / warm_total:.1f}x less ({fresh_total - warm_total:.0f} s saved)"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help="also compare with starts under tailsynth.warm")
    args = ap.parse_args()
    counts = stage_scripts()
    bare = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
    bare = statistics.median(bare)
    print(f"bare interpreter: {bare:.2f} s")
    print(f"{'script':<24}{'stages':>7}{'startup s':>11}{'torch s':>9}{'total s':>9}")
    total = torch_total = 0.0
    for script, n in sorted(counts.items()):
        samples = [import_seconds(script) for _ in range(args.repeats)]
        wall = statistics.median(s[0] for s in samples)
        torch_s = statistics.median(s[1] for s in samples)
        total += n * wall
        torch_total += n * torch_s
        print(f"{script:<24}{n:>7}{wall:>11.2f}{torch_s:>9.2f}{n * wall:>9.1f}")
    stages = sum(counts.values())
    minutes = total / 60
    print(f"{stages} stages: {total:.0f} s of startup in a cold run ({minutes:.1f} min), torch {torch_total:.0f} s")
    if args.warm:
        warm_comparison(counts, args.repeats)


if __name__ == "__main__":
    main()
