"""Where a no-op `dvc repro` spends its time, in a workspace whose outputs are current.

    python benchmarks/profile_noop.py [--repo .] [--runs 3]

Times ``--runs`` plain no-op `dvc repro` runs (the median is the figure the 2-second budget is about),
then runs one more under cProfile and prints the cumulative time of DVC's parts as shares of that
profiled run (the profiler roughly doubles every time, so the shares are what to read, not the
seconds):

- outside reproduce: interpreter start, imports, command-line parsing and exit;
- index: reading every dvc.yaml (params.yaml interpolated into each) and the lock files;
- deps / outs status: hashing each stage's dependencies and outputs against the state database;
- rwlock: DVC's per-stage read/write lock file, edited before and after each stage's check;
- params.yaml reads: one parse per stage that names params;
- YAML parsing: every YAML parse, the two above included.

The parts nest (params.yaml reads are part of deps status; YAML parsing happens inside index and
params reads), so the shares do not add up to 100%. rwlock is a generator-based context manager, so
its share is the lock edits themselves, not the checks they guard. Also prints how many stages and
dependency/output entries were checked. Exits 1 if the repro ran a stage (the workspace was not current).
"""

from __future__ import annotations

import argparse
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DVC = str(Path(sys.executable).parent / "dvc")

# (part, file suffix, function name) in the cProfile statistics of one `dvc repro`
PARTS = [
    ("reproduce (all stage checks)", "dvc/repo/reproduce.py", "reproduce"),
    ("index", "dvc/repo/index.py", "from_repo"),
    ("deps status", "dvc/stage/__init__.py", "changed_deps"),
    ("outs status", "dvc/stage/__init__.py", "changed_outs"),
    ("rwlock", "dvc/rwlock.py", "rwlock"),
    ("params.yaml reads", "dvc/dependency/param.py", "read_param_file"),
    ("YAML parsing", "dvc/utils/serialize/_yaml.py", "parse_yaml"),
]


def repro(repo: Path, profile: Path | None = None) -> tuple[float, str]:
    """(wall seconds, stdout) of one `dvc repro` in ``repo``, under cProfile when ``profile`` is given."""
    cmd = [DVC, "repro"] if profile is None else [sys.executable, "-m", "cProfile", "-o", str(profile), DVC, "repro"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def part_times(stats: pstats.Stats) -> dict[str, tuple[float, int]]:
    """{part: (cumulative seconds, calls)} for PARTS, summed over every function that matches."""
    found: dict[str, tuple[float, int]] = {}
    for (file, _, func), (_, ncalls, _, cumtime, callers) in stats.stats.items():
        for part, suffix, name in PARTS:
            if func == name and file.endswith(suffix):
                # a recursive or re-entered function counts once: only calls from outside itself
                outer = sum(v[3] for (cf, _, cn), v in callers.items() if not (cf == file and cn == func))
                t, n = found.get(part, (0.0, 0))
                found[part] = (t + (outer or cumtime), n + ncalls)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1 (the median of the plain no-op runs is the budget's figure)")

    walls = []
    for _ in range(args.runs):
        wall, out = repro(args.repo)
        if "Running stage" in out:
            sys.exit(f"{args.repo}: `dvc repro` ran a stage; run it once until nothing is left to do, then profile")
        walls.append(wall)
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "repro.prof"
        profiled, _ = repro(args.repo, profile)
        stats = pstats.Stats(str(profile))
    total = stats.total_tt
    parts = part_times(stats)
    each = ", ".join(f"{w:.2f}" for w in walls)
    print(f"no-op dvc repro: median {statistics.median(walls):.2f} s of {args.runs} ({each})")
    print(f"profiled run: {profiled:.2f} s wall, {total:.2f} s in the profiler")
    print(f"  {'outside reproduce':<28}{1 - parts.get(PARTS[0][0], (0.0, 0))[0] / total:6.1%}")
    for part, _, _ in PARTS:
        t, n = parts.get(part, (0.0, 0))
        print(f"  {part:<28}{t / total:6.1%}  ({n} calls)")
    checks = sum(v[1] for (f, _, fn), v in stats.stats.items() if fn == "status" and f.endswith("dvc/output.py"))
    stages = sum(v[1] for (f, _, fn), v in stats.stats.items() if fn == "_reproduce_stage")
    print(f"{stages} stages checked, {checks} dependency and output entries")


if __name__ == "__main__":
    main()
