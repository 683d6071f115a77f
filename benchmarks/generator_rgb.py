"""The embedded generator on small RGB natural-image data, with default params, as a new user runs it.

    python benchmarks/generator_rgb.py [--rev HEAD] [--keep DIR]

Builds a 6-class RGB image folder from the two photos scikit-learn ships (``load_sample_images``:
a temple by a lake and a flower). A class is one region of a photo (sky, pagoda, lake, trees;
petals, the leaves behind them) and its images are 32 x 32 patches cropped at random inside it
(64 x 64 windows, downscaled): natural-image texture and colour, not digits. Train
counts are long-tailed (160 ... 10, 445 images in all), val 4 and test 20 per class. Then, in a
clone of ``--rev``, it sets ``data.dataset: imagefolder`` / ``channels: 3`` and nothing else, runs
`dvc repro` of ``prepare``, ``generator``, ``oracle`` and ``generator_eval`` stage by stage, and
prints each stage's wall time, the generator's training record (VAE steps, reconstruction MSE)
and the oracle accuracy of its Txt2Img samples, mean and worst class, against the bar the
pipeline checks itself with (``generator_eval.min_acc`` / ``min_class_acc``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from sklearn.datasets import load_sample_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_repro import BIN, ROOT, env_for, run, timed  # noqa: E402

TRAIN_COUNTS = (160, 120, 80, 50, 25, 10)
VAL, TEST, PATCH, WINDOW = 4, 20, 32, 64
STAGES = ("prepare", "generator", "oracle", "generator_eval")


# name: (photo index, x0, y0, x1, y1) in the photo's pixels; each box holds a 64 x 64 window.
REGIONS = {
    "sky": (0, 330, 0, 640, 150),
    "pagoda": (0, 90, 90, 330, 330),
    "lake": (0, 330, 210, 550, 300),
    "trees": (0, 540, 140, 640, 427),
    "petals": (1, 180, 100, 440, 340),
    "leaves": (1, 0, 0, 160, 427),
}


def region_classes() -> list[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8 crop) for the six classes of :data:`REGIONS`."""
    photos = load_sample_images().images
    return [(name, photos[k][y0:y1, x0:x1]) for name, (k, x0, y0, x1, y1) in REGIONS.items()]


def write_dataset(root: Path, seed: int = 0) -> int:
    """Write ``root/{train,val,test}/<class>/*.png``; returns the number of train images."""
    rng = np.random.default_rng(seed)
    for (name, region), n_train in zip(region_classes(), TRAIN_COUNTS, strict=True):
        for split, n in (("train", n_train), ("val", VAL), ("test", TEST)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                y = rng.integers(0, region.shape[0] - WINDOW + 1)
                x = rng.integers(0, region.shape[1] - WINDOW + 1)
                patch = Image.fromarray(region[y : y + WINDOW, x : x + WINDOW]).resize((PATCH, PATCH), Image.BICUBIC)
                patch.save(folder / f"{i:04d}.png")
    return sum(TRAIN_COUNTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="git revision whose pipeline and defaults to run")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="tailsynth-rgb-"))
    clone, data = work / "repo", work / "rgb_patches"
    env = env_for(clone)
    try:
        n_train = write_dataset(data)
        run(["git", "clone", "-q", str(ROOT), str(clone)], ROOT, env)
        run(["git", "checkout", "-q", args.rev], clone, env)
        params = yaml.safe_load((clone / "params.yaml").read_text())
        params["data"].update(dataset="imagefolder", root=str(data), channels=3, size=PATCH)
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        rev = run(["git", "rev-parse", "--short", "HEAD"], clone, env).stdout.strip()
        print(f"RGB patches: 6 classes, {n_train} train images; pipeline defaults of {rev}", flush=True)
        for name in STAGES:
            wall, rss, code = timed([str(BIN / "dvc"), "repro", "--single-item", name], clone, env)
            print(f"  {name:<16} {wall:8.1f} s {rss:8.0f} MiB", flush=True)
            if code:
                raise SystemExit(f"stage {name} failed (exit {code})")
        info = json.loads((clone / "models/generator/tailsynth.json").read_text())
        gen = json.loads((clone / "metrics/generator.json").read_text())
        oracle = json.loads((clone / "metrics/oracle.json").read_text())
        print(f"generator: VAE {info['vae_steps']} steps, reconstruction MSE {info['vae_recon_mse']:.5f}")
        print(f"oracle test accuracy {100 * oracle['test_acc']:.1f}%")
        per_class = ", ".join(f"{k} {100 * v:.0f}%" for k, v in gen["oracle_acc_per_class"].items())
        mean, worst = 100 * gen["oracle_acc"], 100 * gen["oracle_acc_min"]
        print(f"Txt2Img oracle accuracy: mean {mean:.1f}%, worst class {worst:.1f}%")
        print(f"  per class: {per_class}")
        ok = gen["oracle_acc"] >= gen["min_acc"] and gen["oracle_acc_min"] >= gen["min_class_acc"]
        print(f"bar (mean >= {gen['min_acc']:.0%}, worst >= {gen['min_class_acc']:.0%}): {'met' if ok else 'MISSED'}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
