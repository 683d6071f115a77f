"""Build the embedded dual-conditioned generator from the trained one and check that it uses the image.

    python benchmarks/unclip_recipe.py [--encoder-steps 300] [--unet-steps 300] [--batch-size 64]

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
from tailsynth.models import generator as gen
from tailsynth.models import unclip as uc
from tailsynth.models.classifier import load_classifier
from tailsynth.synth.sampler import make_scheduler


def conditioning_check(pipe, encoder, oracle, images, labels, prompts, *, pairs, seeds, noise_level, steps, cfg):
    """(oracle acc, mean d(sample, cond), mean d(sample, other), fraction closer to cond)."""
    g = torch.Generator().manual_seed(7)
    cond, other, prompt, seed = [], [], [], []
    for k in range(len(prompts)):
        idx = torch.nonzero(labels == k).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)][: 2 * pairs].tolist()
        for a, b in zip(pick[0::2], pick[1::2], strict=True):
            for s in range(seeds):
                for c, o in ((a, b), (b, a)):
                    cond.append(c)
                    other.append(o)
                    prompt.append(prompts[k])
                    seed.append(1000 * c + s)
    embeds = uc.embed_images(encoder, images)
    out = []
    for i in range(0, len(cond), 64):
        gens = [torch.Generator().manual_seed(s) for s in seed[i : i + 64]]
        size = images.shape[-1]
        result = pipe(
            prompt=prompt[i : i + 64],
            image_embeds=embeds[cond[i : i + 64]],
            noise_level=noise_level,
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=gens,
            height=size,
            width=size,
            output_type="pt",
        )
        out.append(result.images.float().clamp(0, 1))
    samples = torch.cat(out)
    with torch.no_grad():
        fs, fc, fo = oracle.features(samples), oracle.features(images[cond]), oracle.features(images[other])
        acc = (oracle(samples).argmax(1) == labels[cond]).float().mean().item()
    d_cond, d_other = (fs - fc).norm(dim=1), (fs - fo).norm(dim=1)
    return acc, d_cond.mean().item(), d_other.mean().item(), (d_cond < d_other).float().mean().item(), len(cond)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", default="data/prepared/digits")
    ap.add_argument("--encoder-steps", type=int, default=300)
    ap.add_argument("--unet-steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--noise-level", type=int, default=0)
    args = ap.parse_args()
    classes = read_classes(args.prepared)
    pool, pool_labels = load_split(args.prepared, "pool", 1)
    test, test_labels = load_split(args.prepared, "test", 1)
    pool, test = pool.float() / 255, test.float() / 255
    base = gen.load_pipeline("models/generator")
    prompts = [f"a photo of a {c['prompt_name']}" for c in classes]
    ids = base.tokenizer(prompts, padding="max_length", max_length=base.tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        class_text = base.text_encoder(ids.input_ids).pooler_output
    t0 = time.perf_counter()
    encoder, processor = uc.build_image_encoder(pool.shape[-1], uc.ImageEncoderConfig(), seed=0)
    enc = uc.train_image_encoder(encoder, pool, pool_labels, class_text, steps=args.encoder_steps, batch_size=128)
    t_encoder = time.perf_counter() - t0
    embeds = uc.embed_images(encoder, pool)
    unet = uc.unclip_unet(base.unet, embeds.shape[1])
    pipe = uc.assemble_unclip(base, encoder, processor, uc.image_normalizer(embeds), unet)
    mean, std = gen.encode_latents(base.vae, pool)
    t1 = time.perf_counter()
    ft = uc.finetune_unclip(
        pipe,
        mean,
        std,
        [prompts[int(y)] for y in pool_labels],
        embeds,
        steps=args.unet_steps,
        batch_size=args.batch_size,
    )
    t_unet = time.perf_counter() - t1
    print(f"image encoder: {args.encoder_steps} steps x 128 in {t_encoder:.0f} s (loss {enc.loss:.3f})")
    print(f"UNet fine-tune: {args.unet_steps} steps x {args.batch_size} in {t_unet:.0f} s (loss {ft.loss:.4f})")
    pipe.scheduler = make_scheduler("ddim", base.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    oracle = load_classifier("models/oracle").eval()
    print("| images | n | oracle acc | d(sample, cond) | d(sample, other) | gap | closer to cond |")
    print("|---|---|---|---|---|---|---|")
    for name, images, labels in (("pool", pool, pool_labels), ("held-out test", test, test_labels)):
        acc, dc, do, closer, n = conditioning_check(
            pipe,
            encoder,
            oracle,
            images,
            labels,
            prompts,
            pairs=args.pairs,
            seeds=args.seeds,
            noise_level=args.noise_level,
            steps=20,
            cfg=4.0,
        )
        print(f"| {name} | {n} | {acc:.3f} | {dc:.3f} | {do:.3f} | {do - dc:+.3f} | {closer:.3f} |")


if __name__ == "__main__":
    main()
