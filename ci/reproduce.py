"""Check that the committed results come out of the committed code.

    python ci/reproduce.py [--atol 0.05] [--no-pull]

Runs ``dvc repro --pull --allow-missing`` (outputs the DVC remote has are fetched, the rest are
recomputed; plain ``dvc repro`` when no usable remote is configured or with ``--no-pull``),
then compares every metrics and plot-data file in ``metrics/`` with its committed version:

- a file whose stage did not run (its outputs came from the remote or the cache) must be
  byte-identical: nothing was recomputed, so any difference is a committed file that its own
  ``dvc.lock`` (or its part's ``pipelines/<part>/dvc.lock``) does not describe;
- a file whose stage ran is compared number by number (JSON leaves, CSV cells) within
  ``--atol`` (default 0.05, i.e. 5 points of accuracy): torch does not promise bit-exact floats
  across CPU types, and a retrained classifier amplifies a last-bit difference. Text and images
  from a stage that ran are not compared.

Exit status 1 lists every difference; 0 when the committed results reproduce.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

PLACEHOLDER = "change-me"
DVC = str(Path(sys.executable).parent / "dvc")
# The lock of the root dvc.yaml and of each part of the pipeline (pipelines/<part>/dvc.yaml).
LOCK_FILES = ("dvc.lock", *sorted(str(p.with_name("dvc.lock")) for p in Path().glob("pipelines/*/dvc.yaml")))


def usable_remote() -> tuple[bool, str]:
    """(True, url) when a default remote with a real URL is configured (.dvc/config and config.local)."""
    listed = subprocess.run([DVC, "remote", "list"], capture_output=True, text=True).stdout.splitlines()
    default = [line.split() for line in listed if line.rstrip().endswith("(default)")]
    if not default:
        return False, "no default DVC remote is configured"
    name, url = default[0][0], default[0][1]
    if PLACEHOLDER in url:
        return False, f"DVC remote {name!r} still has its placeholder URL ({url}); set it with `dvc remote modify`"
    return True, url


def stage_of_outputs(lock_text: str) -> dict[str, str]:
    """{output path: stage name} from dvc.lock."""
    stages = (yaml.safe_load(lock_text) or {}).get("stages", {})
    return {o["path"]: name for name, body in stages.items() for o in body.get("outs", [])}


def committed(path: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def numbers(path: str, data: bytes) -> dict[str, float] | None:
    """Numeric leaves of a JSON or CSV file, keyed by their path in it; None for other files."""
    if path.endswith(".json"):
        out: dict[str, float] = {}

        def walk(node, key: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{key}.{k}" if key else str(k))
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{key}[{i}]")
            elif isinstance(node, (int, float)) and not isinstance(node, bool):
                out[key] = float(node)

        walk(json.loads(data), "")
        return out
    if path.endswith(".csv"):
        frame = pd.read_csv(io.BytesIO(data))
        return {
            f"row {i} {col}": float(v)
            for col in frame.select_dtypes("number").columns
            for i, v in enumerate(frame[col].tolist())
        }
    return None


def compare(path: str, old: bytes, new: bytes, recomputed: bool, atol: float) -> list[str]:
    """One line per difference that fails the rule for this file."""
    if old == new:
        return []
    if not recomputed:
        return [f"{path}: differs from the committed file, yet its stage did not run (dvc.lock does not describe it)"]
    a, b = numbers(path, old), numbers(path, new)
    if a is None or b is None:
        return []  # text and images of a recomputed stage are not compared
    problems = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            problems.append(f"{path}: {key} is {'missing from the reproduced file' if y is None else 'new'}")
        elif not (math.isclose(x, y, abs_tol=atol) or (math.isnan(x) and math.isnan(y))):
            problems.append(f"{path}: {key} committed {x:.4f}, reproduced {y:.4f} (|diff| {abs(x - y):.4f} > {atol})")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atol", type=float, default=0.05, help="tolerance for numbers of recomputed stages")
    ap.add_argument("--no-pull", action="store_true", help="recompute everything instead of pulling")
    args = ap.parse_args()
    pull, why = (False, "--no-pull") if args.no_pull else usable_remote()
    cmd = [DVC, "repro", "--pull", "--allow-missing"] if pull else [DVC, "repro"]
    print(("pulling from " + why) if pull else f"recomputing without a remote: {why}", flush=True)
    if pull:  # `--pull` fetches declared deps; the image folders behind manifests come from fetch_inputs
        fetch = subprocess.run([sys.executable, str(Path(__file__).with_name("fetch_inputs.py"))])
        if fetch.returncode != 0:
            print("reproduce: pulling the folders that stages read through manifests failed", file=sys.stderr)
            return 1
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout[-20000:])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        print(f"reproduce: `{' '.join(cmd[1:])}` failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    # A part's stage runs as 'pipelines/<part>/dvc.yaml:<stage>': the lock files name it <stage>.
    ran = {name.rpartition(":")[2] for name in re.findall(r"Running stage '([^']+)'", proc.stdout)}
    owner = {}
    for lock in LOCK_FILES:
        owner.update(stage_of_outputs((committed(lock) or b"").decode()))
    tracked = subprocess.run(["git", "ls-files", "metrics"], capture_output=True, text=True).stdout.split()
    problems = []
    for path in tracked:
        old, new_file = committed(path), Path(path)
        new = new_file.read_bytes() if new_file.is_file() else None
        if new is None:
            problems.append(f"{path}: committed but not produced")
            continue
        stage = owner.get(path) or next((s for o, s in owner.items() if path.startswith(o + "/")), None)
        problems += compare(path, old or b"", new, recomputed=stage in ran, atol=args.atol)
    print(f"stages run: {len(ran)} ({', '.join(sorted(ran)) or 'none'}); files compared: {len(tracked)}")
    if problems:
        print("committed results do not reproduce:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("committed results reproduce")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
