"""What ImageNet-LT at the papers' settings would cost: images, disk, training RAM, GPU-hours, per method.

Measured here: the FLOPs of one forward (and, for the feedback guidance, forward + backward) of each
network, counted by ``torch.utils.flop_counter`` on the published architectures (Stable Diffusion
1.5 for GeNIe and its baselines, Stable Diffusion 2.1 unCLIP for the feedback-guided methods, a
ResNet-50 classifier), built on the ``meta`` device (shapes only, no weights), and the embedded
generator's FLOPs and seconds per image on this machine. Taken from the papers: the counts (ImageNet-LT
Few classes x 50 images for GeNIe, 1,184,154 images for the feedback method), the sampler settings,
and the one published time, GeNIe's 6.7 s per 512-px image at r = 0.8 on an RTX 3090, which turns
FLOPs into RTX-3090-hours. Estimated: everything that multiplies these (see the printed notes).

    python benchmarks/scale.py [--rss-kib-per-64px-image 131]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# ImageNet-LT (Liu et al. 2019): 1,000 classes, 115,846 train images; 136 "Few" classes (< 20 images).
IMAGENET_LT_TRAIN, FEW_CLASSES = 115_846, 136
GENIE_PER_CLASS = 50  # GeNIe long-tail: 50 images per Few class
FEEDBACK_IMAGES = 1_184_154  # real + synthetic = 1,300 per class
GENIE_SECONDS_RTX3090 = 6.7  # GeNIe paper: s per image at r = 0.8, 512 px, SD 1.5, 50 DPM-Solver steps
RETRAIN_PX = 224  # the ResNet-50 retraining resolution

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
# SD 2.1 unCLIP: OpenCLIP ViT-H text states (1024) and a noised image embedding as class embedding.
SD21_UNCLIP_UNET = SD15_UNET | dict(
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    class_embed_type="projection",
    projection_class_embeddings_input_dim=2048,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_networks() -> dict[str, float]:
    """FLOPs of one image through each network (meta tensors: shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torchvision.models import resnet50

    meta = torch.device("meta")
    with meta:
        sd15, unclip = UNet2DConditionModel(**SD15_UNET), UNet2DConditionModel(**SD21_UNCLIP_UNET)
        vae, classifier = AutoencoderKL(**SD_VAE), resnet50()
    z, t = torch.empty(1, 4, 64, 64, device=meta), torch.tensor([500], device=meta)
    text15, text21 = torch.empty(1, 77, 768, device=meta), torch.empty(1, 77, 1024, device=meta)
    image_embed = torch.empty(1, 2048, device=meta)
    out = {
        "sd15_unet": flops(lambda: sd15(z, t, encoder_hidden_states=text15)),
        "sd21_unclip_unet": flops(lambda: unclip(z, t, encoder_hidden_states=text21, class_labels=image_embed)),
        "vae_encode": flops(lambda: vae.encode(torch.empty(1, 3, 512, 512, device=meta))),
        "vae_decode": flops(lambda: vae.decode(z)),
        "resnet50_224": flops(lambda: classifier(torch.empty(1, 3, 224, 224, device=meta))),
    }

    def guided_step() -> None:  # d criterion / d z_t through UNet, VAE decoder and classifier at 512 px
        zt = torch.empty(1, 4, 64, 64, device=meta, requires_grad=True)
        eps = unclip(zt, t, encoder_hidden_states=text21, class_labels=image_embed).sample
        logits = classifier(vae.decode(zt - eps).sample)
        logits.sum().backward()

    out["feedback_guided_step"] = flops(guided_step)
    out["sd15_params"] = sum(p.numel() for p in sd15.parameters())
    out["sd21_params"] = sum(p.numel() for p in unclip.parameters())
    return out


def embedded_cost(batch: int = 16, steps: int = 25) -> tuple[float, float, int]:
    """(FLOPs per image, seconds per image at ``batch``, UNet parameters) of the embedded generator on this
    machine: txt2img, ``steps`` DPM-Solver steps, CFG 5 (its architecture untrained: the same cost)."""
    from tailsynth.models import generator as gen
    from tailsynth.synth.sampler import LatentDiffusionSampler

    names = ["zero", "one", "two", "three"]
    comp = gen.build_small_ldm([f"a photo of a {n}" for n in names], gen.SmallLDMConfig(), seed=0)
    sampler = LatentDiffusionSampler(gen.assemble_pipeline(comp))
    prompts = [f"a photo of a {names[i % 4]}" for i in range(batch)]
    one = flops(lambda: sampler.generate(prompts[:1], [0], steps=steps, cfg=5.0))
    sampler.generate(prompts, list(range(batch)), steps=2, cfg=5.0)  # warm-up
    start = time.perf_counter()
    sampler.generate(prompts, list(range(batch)), steps=steps, cfg=5.0)
    return one, (time.perf_counter() - start) / batch, sum(p.numel() for p in comp["unet"].parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rss-kib-per-64px-image",
        type=float,
        default=131.0,
        help="training RSS per train image at 64 px: the classifier's growth in benchmarks/memory.py "
        "with the split held in memory (7,225 - 1,439 MiB for 45,000 more images on 2026-12-07, before streaming)",
    )
    args = ap.parse_args()
    net = count_networks()
    e_flops, e_seconds, e_params = embedded_cost()
    unet15, unclip, dec, enc, emb = (
        net["sd15_unet"],
        net["sd21_unclip_unet"],
        net["vae_decode"],
        net["vae_encode"],
        net["resnet50_224"],
    )
    # Per image: CFG doubles every UNet evaluation; img2img starts from an encoded source at floor(r * 50).
    genie = enc + 40 * 2 * unet15 + dec  # r = 0.8, 50 steps
    per_image = {
        "txt2img": 50 * 2 * unet15 + dec,
        "img2img_low": enc + 15 * 2 * unet15 + dec,  # r = 0.3
        "img2img_high": enc + 35 * 2 * unet15 + dec,  # r = 0.7
        "genie": genie,
        # five runs over r in {0.5, ..., 0.9} (25..45 steps), one kept; six ResNet-50 embeddings
        "genie_ada": enc + (25 + 30 + 35 + 40 + 45) * 2 * unet15 + 5 * dec + 6 * emb,
        "ldm_text_image": 30 * 2 * unclip + dec,  # 30 steps, CFG
        # + every 5th of 30 steps: one conditional UNet pass and d/dz through UNet, VAE decoder, ResNet-50
        "feedback_*": 30 * 2 * unclip + 6 * (unclip + net["feedback_guided_step"]) + dec,
    }
    counts = {
        m: FEW_CLASSES * GENIE_PER_CLASS for m in ("txt2img", "img2img_low", "img2img_high", "genie", "genie_ada")
    }
    counts |= {"ldm_text_image": FEEDBACK_IMAGES, "feedback_*": FEEDBACK_IMAGES}
    saved_px = {m: 512 for m in counts} | {"ldm_text_image": 256, "feedback_*": 256}  # GeNIe: 512 JPEG; FG: 256
    rtx3090 = genie / GENIE_SECONDS_RTX3090  # sustained FLOP/s implied by the published GeNIe time
    cpu = e_flops / e_seconds  # what this machine sustains on the embedded generator

    print(
        f"Networks (FLOPs per image, counted on meta): SD-1.5 UNet {unet15 / 1e9:.0f} G "
        f"({net['sd15_params'] / 1e6:.0f} M params), SD-2.1 unCLIP UNet {unclip / 1e9:.0f} G "
        f"({net['sd21_params'] / 1e6:.0f} M), VAE encode {enc / 1e9:.0f} G / decode {dec / 1e9:.0f} G at 512 px, "
        f"ResNet-50 {emb / 1e9:.1f} G at 224 px, one feedback gradient {net['feedback_guided_step'] / 1e12:.2f} T"
    )
    print(
        f"Embedded generator here: {e_params / 1e6:.2f} M UNet params, {e_flops / 1e9:.2f} GFLOPs and "
        f"{e_seconds * 1e3:.0f} ms per image (batch 16, 25 steps, CFG 5, {torch.get_num_threads()} threads): "
        f"{cpu / 1e9:.1f} GFLOP/s sustained"
    )
    print(
        f"RTX 3090 anchor: GeNIe r=0.8 = {genie / 1e12:.1f} TFLOPs per image in 6.7 s (published) "
        f"= {rtx3090 / 1e12:.1f} TFLOP/s sustained\n"
    )
    print("| method | images | TFLOPs / image | disk (raw, upper bound) | RTX-3090-hours | hours on this CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for method, n in counts.items():
        f = per_image[method]
        disk = n * saved_px[method] ** 2 * 3 / 1e9
        print(
            f"| {method} | {n:,} | {f / 1e12:.1f} | {disk:,.1f} GB | {n * f / rtx3090 / 3600:,.0f} | "
            f"{n * f / cpu / 3600:,.0f} |"
        )
    per_image_ram = args.rss_kib_per_64px_image * (RETRAIN_PX / 64) ** 2 * 1024
    for label, n in (("GeNIe family", FEW_CLASSES * GENIE_PER_CLASS), ("feedback", FEEDBACK_IMAGES)):
        total = IMAGENET_LT_TRAIN + n
        print(
            f"\nretrain RAM if the split were held in memory ({label}, {total:,} images at {RETRAIN_PX} px; past "
            f"runtime.loader.in_memory_mib it streams from disk instead): "
            f"{total * per_image_ram / 2**30:,.0f} GiB (from {args.rss_kib_per_64px_image:.0f} KiB per 64-px image, "
            f"scaled by pixels)"
        )
    print(
        "\nNotes: UNet, VAE and classifier FLOPs only (the text and image encoders run once per image and add "
        "under 3%); the RTX-3090 rate is the GeNIe paper's fp16 time and is assumed for every method; "
        "disk is H x W x 3 bytes per image (PNG or JPEG are smaller)."
    )


if __name__ == "__main__":
    main()
