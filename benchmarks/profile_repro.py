"""Cold `dvc repro` in a temporary clone, stage by stage: wall time and peak RSS of each stage.

    python benchmarks/profile_repro.py [--rev HEAD] [--keep DIR] [--one-repro]

Clones ``--rev`` of this repository into a temporary folder (nothing cached: no data/, models/ or
DVC cache), lists the stages in the order `dvc repro` would run them, then runs each with
`dvc repro --single-item` and records its wall time and the peak resident memory of the
process tree (``wait4``'s ``ru_maxrss``: the largest of dvc and the stage's python). Prints the
stages sorted by time, with the total, then the median of three no-op `dvc repro` runs and whether
the run left `git status` clean (it should: committed results reproduce). The library is imported
from the clone (PYTHONPATH), so an older revision is profiled with its own code. Timings include
dvc's own overhead per call (about a second), which a single `dvc repro` pays once.

``--one-repro`` instead runs one `dvc repro`, as `make run` does, and times each stage from the
moment dvc announces it to the next announcement (so a stage's time includes dvc's lock update
after it; the last one ends with the run); the peak RSS is then the whole run's. ``--warm`` runs that
`dvc repro` under ``python -m tailsynth.warm``, exactly as ``make run`` does (stages forked from a
preloaded interpreter); the peak RSS then misses the stages, which are not this process's children.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env_for(clone: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{clone / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of ``cmd`` and the processes it waited for."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return wall, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def stage_order(clone: Path, env: dict) -> list[str]:
    out = run([str(BIN / "dvc"), "repro", "--dry", "--force"], clone, env).stdout
    return re.findall(r"Running stage '([^']+)'", out)


def one_repro(clone: Path, env: dict, warm: bool = False) -> list[tuple[str, float, float]]:
    """One `dvc repro` in ``clone``: (stage, seconds from its announcement to the next, run's peak RSS MiB)."""
    t0 = time.perf_counter()
    cmd = [str(BIN / "dvc"), "repro"]
    if warm:
        cmd = [str(BIN / "python"), "-m", "tailsynth.warm", *cmd]
    proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks, tail = [], []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        found = re.search(r"Running stage '([^']+)'", line)
        if found:
            marks.append((found.group(1), time.perf_counter()))
            print(f"  {time.perf_counter() - t0:7.1f} s  {found.group(1)}", flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    if os.waitstatus_to_exitcode(status):
        sys.stderr.write("".join(tail))
        raise SystemExit("dvc repro failed")
    rss = usage.ru_maxrss / 1024
    starts = [t for _, t in marks] + [end]
    rows = [(name, starts[i + 1] - t, rss) for i, (name, t) in enumerate(marks)]
    if marks:  # what dvc did before the first stage (collecting, checking) is its own row
        rows.append(("(dvc start-up)", marks[0][1] - t0, rss))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="git revision to profile")
    ap.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder, removed)")
    ap.add_argument("--one-repro", action="store_true", help="one `dvc repro`, stages timed from its log")
    ap.add_argument("--warm", action="store_true", help="with --one-repro: under tailsynth.warm, as make run does")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="tailsynth-profile-"))
    clone = work / "repo" if args.keep is None else work
    env = env_for(clone)
    try:
        run(["git", "clone", "-q", str(ROOT), str(clone)], ROOT, env)
        run(["git", "checkout", "-q", args.rev], clone, env)
        rev = run(["git", "rev-parse", "--short", "HEAD"], clone, env).stdout.strip()
        stages = stage_order(clone, env)
        print(f"profiling {len(stages)} stages of {rev} in {clone} ({os.cpu_count()} cores)", flush=True)
        rows, t0 = ([] if not args.one_repro else one_repro(clone, env, args.warm)), time.perf_counter()
        for name in stages if not args.one_repro else []:
            wall, rss, code = timed([str(BIN / "dvc"), "repro", "--single-item", name], clone, env)
            rows.append((name, wall, rss))
            print(f"  {name:<32} {wall:8.1f} s {rss:8.0f} MiB", flush=True)
            if code:
                raise SystemExit(f"stage {name} failed (exit {code})")
        total = sum(r[1] for r in rows) if args.one_repro else time.perf_counter() - t0
        print(f"\nstages by wall time ({rev}):")
        print(f"| {'stage':<32} | {'wall s':>8} | {'share':>6} | {'peak RSS MiB':>12} |")
        print(f"|{'-' * 34}|{'-' * 10}|{'-' * 8}|{'-' * 14}|")
        for name, wall, rss in sorted(rows, key=lambda r: -r[1]):
            print(f"| {name:<32} | {wall:8.1f} | {100 * wall / total:5.1f}% | {rss:12.0f} |")
        peak = max(r[2] for r in rows)
        print(f"\ntotal {total:.0f} s ({total / 60:.1f} min), {len(rows)} stages, max peak RSS {peak:.0f} MiB")
        noop = sorted(timed([str(BIN / "dvc"), "repro"], clone, env)[0] for _ in range(3))
        print(f"no-op dvc repro: median {noop[1]:.2f} s of 3 ({', '.join(f'{t:.2f}' for t in noop)})")
        dirty = run(["git", "status", "--porcelain"], clone, env).stdout.strip()
        print("git status after the run: " + ("clean" if not dirty else "changed\n" + dirty))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
