"""GeNIe-Ada with shared batches (one pipeline call per grid level for many pairs) against running
every grid level of every pair separately. Same outputs; prints pairs/s of each and the ratio
(target: >= 1.5x on CPU). Usage: python benchmarks/genie_ada.py [--pairs 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.manifest import load_split, read_classes
from tailsynth.methods.genie import GenieAda, class_prototypes
from tailsynth.models import generator as gen
from tailsynth.models.classifier import build_classifier, load_classifier
from tailsynth.synth.sampler import LatentDiffusionSampler

GRID = [0.5, 0.6, 0.7, 0.8, 0.9]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--data", default="data/prepared/digits")
    args = ap.parse_args()
    if Path("models/generator/model_index.json").is_file():
        sampler, label = LatentDiffusionSampler(gen.load_pipeline("models/generator")), "trained embedded generator"
    else:
        comp = gen.build_small_ldm([f"a photo of a {n}" for n in ("zero", "one")], gen.SmallLDMConfig(), seed=0)
        sampler, label = LatentDiffusionSampler(gen.assemble_pipeline(comp)), "untrained embedded architecture"
    if Path(args.data, "classes.json").is_file() and Path("models/classifier/config.json").is_file():
        classes = read_classes(args.data)
        images, labels = load_split(args.data, "train", 1)
        f = load_classifier("models/classifier")
    else:
        classes = [{"prompt_name": n} for n in ("zero", "one")]
        images, labels = (torch.rand(64, 1, 32, 32) * 255).to(torch.uint8), torch.arange(64) % 2
        f = build_classifier("small_cnn", 2, 1, 32, width=16)
    images = images.float() / 255
    protos = class_prototypes(f.features(images).detach(), labels, len(classes))
    # pairs: a source image of one class, the target = the next class
    idx = torch.arange(args.pairs) * (len(images) // args.pairs)
    targets = (labels[idx] + 1) % len(classes)
    batch = pd.DataFrame(
        {
            "target": targets.tolist(),
            "prompt": [f"a photo of a {classes[t]['prompt_name']}" for t in targets.tolist()],
            "seed": list(range(args.pairs)),
        }
    )
    sources = images[idx]

    def generate(rows, src, r):
        return sampler.generate(
            rows["prompt"].tolist(), rows["seed"].tolist(), steps=args.steps, cfg=7.5, sources=src, r=r
        )

    def embed(x):
        with torch.no_grad():
            return f.features(x)

    ada = GenieAda(generate, embed, protos, GRID)
    ada(batch.iloc[:1], sources[:1])  # warm-up
    start = time.perf_counter()
    shared_images, shared = ada(batch, sources)
    t_shared = time.perf_counter() - start
    start = time.perf_counter()
    separate = [ada(batch.iloc[i : i + 1], sources[i : i + 1]) for i in range(args.pairs)]
    t_separate = time.perf_counter() - start
    sep_images = torch.cat([s[0] for s in separate])
    sep_r = [float(s[1]["chosen_r"].iloc[0]) for s in separate]
    same_r = sum(a == b for a, b in zip(shared["chosen_r"].tolist(), sep_r, strict=True))
    diff = (shared_images - sep_images).abs().max().item()
    print(f"generator: {label}; {args.pairs} pairs x {len(GRID)} levels, {args.steps} DPM-Solver steps, CFG 7.5")
    print(f"separate (pair x level) : {args.pairs / t_separate:6.2f} pairs/s ({t_separate:.1f} s)")
    print(f"shared batches           : {args.pairs / t_shared:6.2f} pairs/s ({t_shared:.1f} s)")
    print(f"speed-up                 : {t_separate / t_shared:.2f}x (target >= 1.5x)")
    print(f"outputs                  : chosen r equal for {same_r}/{args.pairs} pairs, max image difference {diff:.4f}")
    print("chosen r histogram       :", shared["chosen_r"].value_counts().sort_index().to_dict())


if __name__ == "__main__":
    main()
