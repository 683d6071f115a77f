"""Batched generation runner vs a one-image-at-a-time loop over the same rows and generator.

Prints images/s of each and their ratio (target: >= 3x at batch 16 on CPU), and checks that both
produce the same images. Usage: python benchmarks/generation.py [--generator models/generator]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tailsynth.methods.registry import TEXT_KEY
from tailsynth.models import generator as gen
from tailsynth.synth.plan import finalize_rows
from tailsynth.synth.runner import run_plan
from tailsynth.synth.sampler import LatentDiffusionSampler


def load_or_build(path: str) -> tuple[LatentDiffusionSampler, str]:
    if Path(path, "model_index.json").is_file():
        return LatentDiffusionSampler(gen.load_pipeline(path)), path
    # Same architecture as the embedded default, untrained: the speed is the same.
    names = ["zero", "one", "two", "three"]
    comp = gen.build_small_ldm([f"a photo of a {n}" for n in names], gen.SmallLDMConfig(), seed=0)
    return LatentDiffusionSampler(gen.assemble_pipeline(comp)), "untrained embedded architecture"


def timed_run(sampler, plan, folder: Path, batch_size: int) -> float:
    def generate(batch, sources):
        return sampler.generate(
            batch["prompt"].tolist(),
            batch["seed"].tolist(),
            steps=int(batch["steps"].iloc[0]),
            cfg=float(batch["cfg"].iloc[0]),
        )

    start = time.perf_counter()
    run_plan(plan, folder, generate, lambda b: None, image_size=32, channels=1, batch_size=batch_size)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", default="models/generator")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sampler, label = load_or_build(args.generator)
    names = ["six", "seven", "eight", "nine"]
    rows = [
        {
            "method": "txt2img",
            "mode": "txt2img",
            "target": i % 4,
            "source_image": "",
            "source_label": -1,
            "r": 1.0,
            "steps": args.steps,
            "cfg": 5.0,
            "scheduler": "dpm_solver",
            "seed": 1000 + i,
            "prompt": f"a photo of a {names[i % 4]}",
        }
        for i in range(args.rows)
    ]
    plan = finalize_rows(rows, "bench", TEXT_KEY)
    sampler.generate([rows[0]["prompt"]], [0], steps=2, cfg=5.0)  # warm-up
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        t_loop = timed_run(sampler, plan, Path(a), 1)
        t_batch = timed_run(sampler, plan, Path(b), args.batch_size)
        diffs = [
            np.abs(np.asarray(Image.open(Path(a) / p), dtype=int) - np.asarray(Image.open(Path(b) / p), dtype=int))
            for p in plan["image"]
        ]
    max_diff = max(int(d.max()) for d in diffs)
    identical = sum(int(d.max() == 0) for d in diffs)
    print(
        f"generator: {label}; {args.rows} txt2img rows, {args.steps} DPM-Solver steps, CFG 5, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"one at a time : {args.rows / t_loop:7.2f} images/s ({t_loop:.1f} s)")
    print(f"batch {args.batch_size:<8d}: {args.rows / t_batch:7.2f} images/s ({t_batch:.1f} s)")
    print(f"speed-up      : {t_loop / t_batch:.2f}x (target >= 3x)")
    print(f"outputs       : {identical}/{args.rows} PNGs identical, max pixel difference {max_diff}/255")


if __name__ == "__main__":
    main()
