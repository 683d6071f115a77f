"""Fusion's speed/quality claim, measured in one run on the pipeline's own outputs.

    python benchmarks/fusion.py [--steps 0 1 5] [--repeats 3]

Needs a finished `dvc repro` (models/generator, models/oracle, data/fusion/fused, the prepared data).
The fusion itself (S on both samples, the CAM masks, D: `fuse_latents` on the planned pairs of
data/fusion/fused/rows.csv) is timed too and counted in every fusion variant's time per image.
For each refinement step count, the fused latents of data/fusion/fused are decoded after that many
steps of the last-steps DDIM schedule (fusion.refine.schedule, CFG fusion.refine.cfg, the tail class's
prompt), and Txt2Img at the full schedule (synth.steps DPM-Solver steps, synth.cfg) makes the same
number of images per tail class with the same prompts. Prints, per variant: seconds per image (best of
--repeats, after a warm-up), fd_oracle against the real test images of the tail classes (the oracle's
feature space, as evaluate@ reports it), the oracle's label accuracy (the tail class), how often the oracle
names the head neighbour's class instead (fusion only), Inception FID when its weights are present, and
each variant's time per image as a ratio to Txt2Img's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1, 5])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from tailsynth.data.class_names import prompt_for
    from tailsynth.data.images import match_channels, resize_batch
    from tailsynth.data.manifest import image_shape, load_split, read_classes
    from tailsynth.methods.fusion.embedding import load_models
    from tailsynth.methods.fusion.fuse import fuse_latents
    from tailsynth.methods.fusion.latents import load_latents
    from tailsynth.methods.fusion.refine import FusionRefiner
    from tailsynth.metrics.frechet import frechet_distance, inception_features, inception_weights_path
    from tailsynth.models.classifier import load_classifier, predict
    from tailsynth.models.generator import load_pipeline
    from tailsynth.synth.sampler import LatentDiffusionSampler

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    folder = ROOT / "data/prepared" / params["data"]["dataset"]
    classes = read_classes(folder)
    channels, size = image_shape(folder)
    rows = pd.read_csv(ROOT / "data/fusion/fused/rows.csv", keep_default_na=False)
    fused = load_file(str(ROOT / "data/fusion/fused/latents.safetensors"))["latents"]
    prompts = [prompt_for(params["generator"]["prompt"], classes[int(t)]) for t in rows["target"]]
    labels = torch.tensor(rows["target"].tolist())
    head_labels = torch.tensor(rows["head_label"].tolist())
    refine, synth = params["fusion"]["refine"], params["synth"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler = LatentDiffusionSampler(load_pipeline(str(ROOT / "models/generator"), device=device), "dpm_solver")
    refiner = FusionRefiner(sampler.txt2img, schedule=refine["schedule"])
    oracle = load_classifier(ROOT / "models/oracle", device)
    test_x, test_y = load_split(folder, "test", channels)
    real = test_x[torch.isin(test_y, labels.unique())].float() / 255
    _, real_feats = predict(oracle, real)
    fid_ok = inception_weights_path()[0] is not None
    real_inception = inception_features(real, device=device) if fid_ok else None
    seeds = rows["seed"].tolist()
    models = load_models(ROOT / "models/fusion", device)
    _, latents = load_latents(ROOT / "data/latents")
    maps = load_file(str(ROOT / "data/fusion/cams.safetensors"))["maps"]
    batch = params["fusion"]["batch_size"]
    with torch.no_grad():
        refused, _ = fuse_latents(models, latents, maps, rows, batch)
    assert torch.equal(refused, fused), "data/fusion/fused is stale: re-run dvc repro"

    def timed(make) -> tuple[torch.Tensor, float]:
        """``make()``'s result and its best time over --repeats (after a warm-up), per image."""
        make()
        best, out = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = make()
            best = min(best, time.perf_counter() - t0)
        return out, best / len(rows)

    def as_output(images: torch.Tensor) -> torch.Tensor:
        return resize_batch(match_channels(images, channels), size)

    _, fuse_time = timed(lambda: fuse_latents(models, latents, maps, rows, batch))
    variants = {}
    for steps in args.steps:
        images, per_image = timed(
            lambda steps=steps: refiner.images(fused, prompts, steps=steps, cfg=float(refine["cfg"]))
        )
        variants[f"fusion, {steps} steps"] = (as_output(images), per_image + fuse_time)
    images, per_image = timed(lambda: sampler.generate(prompts, seeds, steps=synth["steps"], cfg=float(synth["cfg"])))
    variants[f"txt2img, {synth['steps']} steps"] = (as_output(images), per_image)
    base = variants[f"txt2img, {synth['steps']} steps"][1]
    print(f"fusion (S, masks, D) {fuse_time:.4f} s / image, included in the fusion rows")
    print(f"{len(rows)} images for tail classes {sorted(set(rows['target']))}, {len(real)} real test images, {device}")
    print("| variant | s / image | time vs txt2img | fd_oracle | oracle acc | oracle says head class | FID |")
    print("|---|---|---|---|---|---|---|")
    for name, (images, per_image) in variants.items():
        logits, feats = predict(oracle, images)
        fd = frechet_distance(feats.numpy(), real_feats.numpy())
        acc = float((logits.argmax(1) == labels).float().mean())
        head = f"{100 * float((logits.argmax(1) == head_labels).float().mean()):.1f}" if "fusion" in name else "—"
        fid = f"{frechet_distance(inception_features(images, device=device), real_inception):.1f}" if fid_ok else "—"
        print(f"| {name} | {per_image:.4f} | {per_image / base:.3f} | {fd:.2f} | {100 * acc:.1f} | {head} | {fid} |")
    if not fid_ok:
        print(f"FID: {inception_weights_path()[1]}")


if __name__ == "__main__":
    main()
