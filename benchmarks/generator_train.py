"""Embedded generator training: the old recipe (kept here as the reference) vs the one in params.yaml.

    python benchmarks/generator_train.py [--params params.yaml] [--rounds 5] [--block 4] [--full]

Both recipes train the same data (the digits pool of the embedded default, built in memory as the
prepare stage builds it) with the current code. Seconds per VAE
step and per UNet step are measured interleaved (old block, new block, old block, ...; the first
step of every block is a warm-up and not counted) and reported as medians, so other load on the
machine slows both alike. The full recipe is estimated as steps x median seconds per step, with
the VAE steps the new recipe actually needs (it may stop at ``generator.vae.target_mse``: the VAE
is trained once to find out). ``--full`` also trains both recipes end to end, old then new, and
reports their wall times (those are not interleaved: compare them on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from tailsynth.models import generator as gen

# The recipe before this benchmark existed (params.yaml `generator` section and SmallLDMConfig
# then): VAE 150 steps at a constant lr, UNet 1200 steps at a constant lr, EMA 0.999.
OLD_CONFIG = {
    "vae_channels": (32, 64, 64),
    "vae_norm_groups": 32,
    "unet_channels": (32, 64),
    "unet_norm_groups": 8,
    "attention_head_dim": 4,
    "text_hidden": 64,
    "text_layers": 2,
}
OLD_RECIPE = {
    "vae": {"steps": 150, "batch_size": 64, "lr": 0.001, "kl_weight": 0.0001},
    "unet": {
        "steps": 1200,
        "batch_size": 128,
        "lr": 0.0005,
        "warmup_steps": 100,
        "uncond_prob": 0.1,
        "ema_decay": 0.999,
    },
}
VAE_KEYS = ("steps", "batch_size", "lr", "kl_weight", "target_mse")
UNET_KEYS = ("steps", "batch_size", "lr", "warmup_steps", "uncond_prob", "ema_decay")


def digits_pool() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The embedded default's generator split (digits pool, 32 px, 8-bit as prepared), labels and prompts."""
    from tailsynth.data.digits import load_digits_split

    d = load_digits_split(size=32, imbalance_ratio=30, max_per_class=120, test_per_class=50, val_per_class=4, seed=0)
    pool = torch.as_tensor(d["in_pool"], dtype=torch.bool)
    images = (d["images"][pool].clamp(0, 1) * 255).round() / 255  # the prepare stage stores 8-bit PNGs
    return images, torch.as_tensor(d["labels"])[pool], [f"a photo of a {n}" for n in d["names"]]


def vae_kwargs(recipe: dict) -> dict:
    return {k: recipe["vae"][k] for k in VAE_KEYS if k in recipe["vae"]}


def unet_kwargs(recipe: dict) -> dict:
    return {k: recipe["unet"][k] for k in UNET_KEYS if k in recipe["unet"]}


class Recipe:
    """One recipe's models and data, with timed blocks of VAE and UNet steps."""

    def __init__(self, name: str, recipe: dict, config: gen.SmallLDMConfig, images, labels, prompts):
        self.name, self.recipe, self.images = name, recipe, images
        self.prompts = [prompts[y] for y in labels.tolist()]
        self.comp = gen.build_small_ldm(prompts, config, seed=0)
        self.mean, self.std = gen.encode_latents(self.comp["vae"], images)
        gen.set_latent_scaling(self.comp["vae"], self.mean)
        self.vae_times: list[float] = []
        self.unet_times: list[float] = []

    @staticmethod
    def _stamps() -> tuple[list[float], callable]:
        stamps: list[float] = []
        return stamps, lambda step, loss: stamps.append(time.perf_counter())

    def vae_block(self, steps: int) -> None:
        stamps, cb = self._stamps()
        kw = vae_kwargs(self.recipe) | {"steps": steps, "target_mse": None}
        gen.train_vae(self.comp["vae"], self.images, log_every=1, callback=cb, **kw)
        self.vae_times += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]  # drops the first step

    def unet_block(self, steps: int) -> None:
        stamps, cb = self._stamps()
        kw = unet_kwargs(self.recipe) | {"steps": steps}
        gen.train_denoiser(self.comp, self.mean, self.std, self.prompts, log_every=1, callback=cb, **kw)
        self.unet_times += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def full_run(recipe: dict, config: gen.SmallLDMConfig, images, labels, prompts) -> dict:
    comp = gen.build_small_ldm(prompts, config, seed=0)
    t0 = time.perf_counter()
    vae = gen.train_vae(comp["vae"], images, **vae_kwargs(recipe))
    t_vae = time.perf_counter() - t0
    mean, std = gen.encode_latents(comp["vae"], images)
    gen.set_latent_scaling(comp["vae"], mean)
    gen.train_denoiser(comp, mean, std, [prompts[y] for y in labels.tolist()], **unet_kwargs(recipe))
    return {"vae_s": t_vae, "total_s": time.perf_counter() - t0, "vae_steps": vae.steps, "vae_mse": vae.loss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml", help="the new recipe: its generator section")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=4, help="steps per timed block (the first is not counted)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--full", action="store_true", help="also train both recipes end to end")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new_recipe = yaml.safe_load(Path(args.params).read_text())["generator"]
    images, labels, prompts = digits_pool()
    size, channels = images.shape[-1], images.shape[1]
    old_config = gen.SmallLDMConfig(image_size=size, channels=channels, **OLD_CONFIG)
    new_config = gen.SmallLDMConfig(image_size=size, channels=channels)
    print(f"{len(images)} images {tuple(images.shape[1:])}, {torch.get_num_threads()} threads")
    print(f"old: {OLD_RECIPE}\nnew: { {k: new_recipe[k] for k in ('vae', 'unet')} }")

    # How many VAE steps the new recipe runs (it may stop early at its target MSE).
    probe = gen.build_small_ldm(prompts, new_config, seed=0)
    t0 = time.perf_counter()
    new_vae = gen.train_vae(probe["vae"], images, **vae_kwargs(new_recipe))
    print(
        f"new VAE: {new_vae.steps} steps to MSE {new_vae.loss:.5f} ({time.perf_counter() - t0:.1f} s, not interleaved)"
    )

    old = Recipe("old", OLD_RECIPE, old_config, images, labels, prompts)
    new = Recipe("new", new_recipe, new_config, images, labels, prompts)
    for _ in range(args.rounds):
        for r in (old, new):
            r.vae_block(args.block)
        for r in (old, new):
            r.unet_block(args.block)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    steps = {
        "old": (OLD_RECIPE["vae"]["steps"], OLD_RECIPE["unet"]["steps"]),
        "new": (new_vae.steps, new_recipe["unet"]["steps"]),
    }
    est = {r.name: steps[r.name][0] * med(r.vae_times) + steps[r.name][1] * med(r.unet_times) for r in (old, new)}
    rows = [
        ("s / VAE step", med(old.vae_times), med(new.vae_times)),
        ("s / UNet step", med(old.unet_times), med(new.unet_times)),
        ("s / full recipe (steps x s/step)", est["old"], est["new"]),
    ]
    for name, (v, u) in steps.items():
        print(f"{name} recipe: VAE {v} steps + UNet {u} steps")
    print(f"{'':34s} {'old':>9s} {'new':>9s} {'old/new':>8s}")
    for what, o, n in rows:
        print(f"{what:34s} {o:9.3f} {n:9.3f} {o / n:7.2f}x")
    if args.full:
        runs = {
            name: full_run(r, c, images, labels, prompts)
            for name, r, c in (("old", OLD_RECIPE, old_config), ("new", new_recipe, new_config))
        }
        for name, run in runs.items():
            print(f"full {name}: VAE {run['vae_steps']} steps {run['vae_s']:.1f} s, total {run['total_s']:.1f} s")
        print(
            f"full recipe wall time old/new: {runs['old']['total_s'] / runs['new']['total_s']:.2f}x (not interleaved)"
        )


if __name__ == "__main__":
    main()
