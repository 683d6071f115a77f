"""Fusion's speed/quality claim, measured in one run on the pipeline's own outputs.

    python benchmarks/fusion.py [--steps 0 1 5] [--repeats 3] [--work DIR]

Needs a finished `dvc repro` (models/generator, models/oracle, data/fusion/fused, the prepared data)
in this repository, or in ``--work`` (a folder with its own params.yaml, e.g. the one
`benchmarks/multilabel.py --work DIR` leaves).
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

On multi-label data the real images are the test images showing a tail label (one entry per tail label
shown, as evaluate@ scores them), oracle acc is the share of images whose made-for label the multi-label
oracle detects (sigmoid > 0.5), and the head column the share where it detects any of the head
neighbour's labels.
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
    ap.add_argument("--work", type=Path, default=ROOT, help="the workspace to read (default: this repository)")
    args = ap.parse_args()
    work = args.work.resolve()

    from tailsynth.data.class_names import prompt_for
    from tailsynth.data.images import match_channels, resize_batch
    from tailsynth.data.manifest import image_shape, read_classes
    from tailsynth.data.targets import load_targets, multi_hot
    from tailsynth.methods.fusion.embedding import load_models
    from tailsynth.methods.fusion.fuse import fuse_latents
    from tailsynth.methods.fusion.latents import load_latents
    from tailsynth.methods.fusion.refine import FusionRefiner
    from tailsynth.metrics.frechet import frechet_distance, inception_features, inception_weights_path
    from tailsynth.models.classifier import load_classifier, predict
    from tailsynth.models.generator import load_pipeline
    from tailsynth.synth.sampler import LatentDiffusionSampler

    params = yaml.safe_load((work / "params.yaml").read_text())
    folder = work / "data/prepared" / params["data"]["dataset"]
    classes = read_classes(folder)
    channels, size = image_shape(folder)
    rows = pd.read_csv(work / "data/fusion/fused/rows.csv", keep_default_na=False)
    fused = load_file(str(work / "data/fusion/fused/latents.safetensors"))["latents"]
    prompts = [prompt_for(params["generator"]["prompt"], classes[int(t)]) for t in rows["target"]]
    labels = torch.tensor(rows["target"].tolist())
    head_labels = torch.tensor(rows["head_label"].tolist())
    refine, synth = params["fusion"]["refine"], params["synth"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler = LatentDiffusionSampler(load_pipeline(str(work / "models/generator"), device=device), "dpm_solver")
    refiner = FusionRefiner(sampler.txt2img, schedule=refine["schedule"])
    oracle = load_classifier(work / "models/oracle", device)
    test_x, test_y = load_targets(folder, "test", channels, len(classes))
    multilabel = test_y.ndim == 2
    if multilabel:  # each test image stands for every tail label it shows
        shown = test_y.nonzero()
        real = test_x[shown[torch.isin(shown[:, 1], labels.unique()), 0]].float() / 255
        head_hot = multi_hot(rows["head_labels"], len(classes)).bool()
    else:
        real = test_x[torch.isin(test_y, labels.unique())].float() / 255
    _, real_feats = predict(oracle, real)
    fid_ok = inception_weights_path()[0] is not None
    real_inception = inception_features(real, device=device) if fid_ok else None
    seeds = rows["seed"].tolist()
    models = load_models(work / "models/fusion", device)
    _, latents = load_latents(work / "data/latents")
    maps = load_file(str(work / "data/fusion/cams.safetensors"))["maps"]
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
        if multilabel:
            detected = logits.sigmoid() > 0.5
            acc = float(detected[torch.arange(len(labels)), labels].float().mean())
            says_head = (detected & head_hot).any(1)
        else:
            acc = float((logits.argmax(1) == labels).float().mean())
            says_head = logits.argmax(1) == head_labels
        head = f"{100 * float(says_head.float().mean()):.1f}" if "fusion" in name else "—"
        fid = f"{frechet_distance(inception_features(images, device=device), real_inception):.1f}" if fid_ok else "—"
        print(f"| {name} | {per_image:.4f} | {per_image / base:.3f} | {fd:.2f} | {100 * acc:.1f} | {head} | {fid} |")
    if not fid_ok:
        print(f"FID: {inception_weights_path()[1]}")


if __name__ == "__main__":
    main()
