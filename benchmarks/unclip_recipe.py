"""Build the embedded dual-conditioned generator from the trained one and check that it uses the image.

    python benchmarks/unclip_recipe.py [--encoder-steps 300] [--unet-steps 300] [--batch-size 64]
        [--lr 2e-3] [--class-lr 1e-2] [--min-timestep 400]

Run in a repository whose `dvc repro` has produced data/prepared/digits, models/generator and
models/oracle. Trains the image encoder on the pool, fine-tunes the zero-initialised unCLIP UNet,
then the conditioning check: for every class, pairs (A, B) of real images of that class, each pair
generated from A and from B with the same seeds (so the choice of A cancels out), on pool images
and on held-out test images. Prints the training times, and for each split the oracle accuracy of
the samples, the mean oracle-feature distance of a sample to its conditioning image and to the
other image of its pair, and the fraction of samples closer to their conditioning image.
"""

from __future__ import annotations

import argparse
import time

import torch

from tailsynth.data.manifest import load_split, read_classes
from tailsynth.metrics.conditioning import conditioning_design, conditioning_distances
from tailsynth.models import generator as gen
from tailsynth.models import unclip as uc
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.synth.unclip_sampler import UnCLIPSampler


def conditioning_check(sampler, oracle, images, labels, prompts, *, pairs, seeds, noise_level, steps, cfg):
    """The generator_unclip_eval check: (oracle acc, d_cond, d_other, closer, n) on ``images`` (uint8)."""
    design = conditioning_design(labels, pairs=pairs, seeds=seeds, seed=7)
    out = []
    for i in range(0, len(design.cond), 64):
        rows = slice(i, i + 64)
        out.append(
            sampler.generate(
                [prompts[k] for k in design.labels[rows]],
                design.seeds[rows],
                steps=steps,
                cfg=cfg,
                cond_images=images[design.cond[rows]],
                noise_level=noise_level,
            )
        )
    logits, feats = predict(oracle, torch.cat(out))
    _, real = predict(oracle, images.float() / 255)
    d = conditioning_distances(feats, real[design.cond], real[design.other])
    acc = float((logits.argmax(1) == torch.tensor(design.labels)).float().mean())
    return acc, d["d_cond"], d["d_other"], d["closer"], d["n"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", default="data/prepared/digits")
    ap.add_argument("--encoder-steps", type=int, default=300)
    ap.add_argument("--unet-steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--noise-level", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3, help="UNet body learning rate")
    ap.add_argument("--class-lr", type=float, default=1e-2, help="learning rate of the image-embedding input")
    ap.add_argument("--min-timestep", type=int, default=400, help="fine-tune on timesteps from this one up")
    ap.add_argument("--cfg", type=float, default=4.0)
    args = ap.parse_args()
    classes = read_classes(args.prepared)
    pool, pool_labels = load_split(args.prepared, "pool", 1)
    test, test_labels = load_split(args.prepared, "test", 1)
    base = gen.load_pipeline("models/generator")
    prompts = [f"a photo of a {c['prompt_name']}" for c in classes]
    class_text = uc.pooled_text(base, prompts)
    t0 = time.perf_counter()
    encoder, processor = uc.build_image_encoder(pool.shape[-1], uc.ImageEncoderConfig(), seed=0)
    enc = uc.train_image_encoder(
        encoder, pool.float() / 255, pool_labels, class_text, steps=args.encoder_steps, batch_size=128
    )
    t_encoder = time.perf_counter() - t0
    embeds = uc.processor_embeddings(encoder, processor, pool)
    unet = uc.unclip_unet(base.unet, embeds.shape[1])
    pipe = uc.assemble_unclip(base, encoder, processor, uc.image_normalizer(embeds), unet)
    mean, std = gen.encode_latents(base.vae, pool.float() / 255)
    t1 = time.perf_counter()
    ft = uc.finetune_unclip(
        pipe,
        mean,
        std,
        [prompts[int(y)] for y in pool_labels],
        embeds,
        steps=args.unet_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        class_lr=args.class_lr,
        min_timestep=args.min_timestep,
    )
    t_unet = time.perf_counter() - t1
    print(f"image encoder: {args.encoder_steps} steps x 128 in {t_encoder:.0f} s (loss {enc.loss:.3f})")
    print(f"UNet fine-tune: {args.unet_steps} steps x {args.batch_size} in {t_unet:.0f} s (loss {ft.loss:.4f})")
    sampler = UnCLIPSampler(pipe, "ddim")
    oracle = load_classifier("models/oracle").eval()
    print("| images | n | oracle acc | d(sample, cond) | d(sample, other) | gap | closer to cond |")
    print("|---|---|---|---|---|---|---|")
    for name, images, labels in (("pool", pool, pool_labels), ("held-out test", test, test_labels)):
        acc, dc, do, closer, n = conditioning_check(
            sampler,
            oracle,
            images,
            labels,
            prompts,
            pairs=args.pairs,
            seeds=args.seeds,
            noise_level=args.noise_level,
            steps=20,
            cfg=args.cfg,
        )
        print(f"| {name} | {n} | {acc:.3f} | {dc:.3f} | {do:.3f} | {do - dc:+.3f} | {closer:.3f} |")


if __name__ == "__main__":
    main()
