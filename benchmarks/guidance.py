"""Feedback-guided sampling vs plain sampling: time and peak memory as ratios, measured in one run.

    python benchmarks/guidance.py [--generator models/generator] [--classifier models/classifier]
                                  [--batch-size 64] [--steps 25] [--every 5 1] [--criterion loss]

Each variant (plain, then guided every N steps for each --every) runs in a fresh process so that its
peak resident memory (CPU) or peak CUDA allocation is its own; the same prompts, seeds, steps, CFG
and batch throughout. Folders that do not exist fall back to the embedded default's architecture,
untrained (the cost is the same). Prints seconds per batch, peak memory, the ratios to plain, and
the mean criterion of the final images by the guiding classifier (guidance should raise it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def load(generator: str, classifier: str, device: str):
    from tailsynth.models import generator as gen
    from tailsynth.models.classifier import build_classifier, load_classifier
    from tailsynth.synth.sampler import LatentDiffusionSampler

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    if Path(generator, "model_index.json").is_file():
        pipe = gen.load_pipeline(generator)
    else:
        comp = gen.build_small_ldm([f"a photo of a {n}" for n in names], gen.SmallLDMConfig(), seed=0)
        pipe = gen.assemble_pipeline(comp)
    if Path(classifier, "config.json").is_file():
        model = load_classifier(classifier)
    else:
        model = build_classifier("small_cnn", len(names), 1, 32, width=16, seed=0)
    sampler = LatentDiffusionSampler(pipe.to(device), "dpm_solver")
    return sampler, model.to(device).eval(), names


def run_variant(args: argparse.Namespace, every: int) -> dict:
    """One variant in this process: seconds per batch (after a warm-up batch) and peak memory in MiB."""
    from tailsynth.synth.guidance import FeedbackGuidance, GuidanceConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler, classifier, names = load(args.generator, args.classifier, device)
    pipe = sampler.txt2img
    targets = torch.arange(args.batch_size) % len(names)
    prompts = [f"a photo of a {names[int(t)]}" for t in targets]

    def batch(seed0: int) -> float:
        """Generate one batch; the mean criterion of its final images."""
        gens = [torch.Generator().manual_seed(seed0 + i) for i in range(args.batch_size)]
        common = dict(prompt=prompts, num_inference_steps=args.steps, guidance_scale=5.0, generator=gens)
        size = sampler.resolution
        guidance = FeedbackGuidance(
            classifier, targets, GuidanceConfig(args.criterion, args.omega * (every > 0), every or 1)
        )
        if every == 0:
            images = pipe(height=size, width=size, output_type="pt", **common).images
        else:
            with guidance.attached(pipe):
                images = pipe(height=size, width=size, output_type="pt", callback_on_step_end=guidance, **common).images
        with torch.no_grad():
            return float(guidance.values(images.float() * 2 - 1).mean())

    batch(0)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    criterion = sum(batch(1000 * (k + 1)) for k in range(args.repeats)) / args.repeats
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = (time.perf_counter() - start) / args.repeats
    return {"every": every, "seconds": seconds, "peak_mib": peak, "device": device, "criterion": criterion}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="models/generator")
    ap.add_argument("--classifier", default="models/classifier")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--every", type=int, nargs="+", default=[5, 1])
    ap.add_argument("--criterion", default="loss", choices=["loss", "entropy"])  # hardness needs class Gaussians
    ap.add_argument("--omega", type=float, default=0.03)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = ap.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args, args.variant)))
        return
    results = []
    for every in [0, *args.every]:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", str(every)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    plain = results[0]
    print(
        f"{args.batch_size} images a batch, {args.steps} DPM-Solver steps, CFG 5, criterion {args.criterion} "
        f"(omega {args.omega:g}), "
        f"{plain['device']} ({torch.get_num_threads()} threads)"
    )
    print("| variant | s / batch | peak MiB | time ratio | memory ratio | final criterion (mean) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        name = "plain" if r["every"] == 0 else f"guided every {r['every']}"
        print(
            f"| {name} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['seconds'] / plain['seconds']:.2f} | "
            f"{r['peak_mib'] / plain['peak_mib']:.2f} | {r['criterion']:.3f} |"
        )


if __name__ == "__main__":
    main()
