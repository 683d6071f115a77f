"""Peak memory of the data-heavy stages as the dataset grows: the bounded-memory target of issue 11.

    python benchmarks/memory.py [--sizes 5000 50000] [--px 64] [--work DIR]

For each size, writes a synthetic ImageFolder (``size`` train JPEGs of ``px`` px in 10 classes, a
test split of 20 per class), copies the pipeline's stages and library into a project there with
params for it (``data.dataset: imagefolder``, ``px`` px RGB, 20 training steps), and runs the
stages ``prepare``, ``classifier``, ``retrain none`` and ``evaluate none`` one by one. It prints each
stage's peak resident memory (``profile_repro.timed``: ``wait4``'s ``ru_maxrss``, the largest process) per size and the
growth from the smallest to the largest size; the target is at most 1.2x for a 10x larger dataset.
Training steps are few on purpose: memory, not accuracy, is measured, and holding a split in RAM
costs the same at any step count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_repro import ROOT, timed  # noqa: E402

STAGES = (("prepare", []), ("classifier", []), ("retrain", ["none"]), ("evaluate", ["none"]))
CLASSES = 10


def make_images(root: Path, train: int, px: int, test_per_class: int = 20) -> None:
    gen = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test_per_class * CLASSES)):
        for i in range(count):
            path = root / split / f"class_{i % CLASSES:02d}" / f"{i:06d}.jpg"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            coarse = gen.integers(0, 256, (max(1, px // 8), max(1, px // 8), 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((px, px), Image.BICUBIC).save(path, quality=90)


def make_project(dest: Path, images: Path, px: int) -> None:
    for name in ("stages", "src"):
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] |= {"dataset": "imagefolder", "root": str(images), "size": px, "channels": 3}
    for section in ("classifier", "retrain"):
        params[section] |= {"steps": 20}
    params["eval"]["seeds"] = 1
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tailsynth_bench_memory")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.work / "src"))
    rss: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    for size in args.sizes:
        images = args.work / f"images_{size}_{args.px}"
        make_images(images, size, args.px)
        project = args.work / f"project_{size}"
        project.mkdir(parents=True, exist_ok=True)
        make_project(project, images, args.px)
        env["PYTHONPATH"] = str(project / "src")
        for name, stage_args in STAGES:
            wall, mib, code = timed([sys.executable, f"stages/{name}.py", *stage_args], project, env)
            if code:
                raise SystemExit(f"stage {name} failed at {size} images (exit {code}); its stderr is above")
            rss[name].append(mib)
            print(f"{size:>7} images  {name:<10} peak RSS {mib:8.0f} MiB  ({wall:.0f} s)", flush=True)
    print()
    print("| stage | " + " | ".join(f"{s} images" for s in args.sizes) + " | growth |")
    print("|---|" + "---:|" * (len(args.sizes) + 1))
    for name, values in rss.items():
        cells = " | ".join(f"{v:.0f} MiB" for v in values)
        print(f"| {name} | {cells} | {values[-1] / values[0]:.2f}x |")


if __name__ == "__main__":
    main()
