"""Train the tiny generators (the LDM's VAE, then its UNet and text encoder; then the dual-conditioned model's
image encoder and UNet) in however many processes it was launched in.

    python generator_worker.py OUT [--accelerate]     (or under ``accelerate launch --multi_gpu --num_processes 2``)

Writes ``OUT/weights.pt`` (main process): the VAE's, UNet's, text encoder's, image encoder's and unCLIP UNet's
weights, and the logged losses.
"""

import sys
from pathlib import Path

import torch
from conftest import tiny_ldm_config

from tailsynth.models import generator as gen
from tailsynth.models import unclip as uc

PROMPTS = ["a photo of a zero", "a photo of a one", "a photo of a two", "a photo of a three"]
out = Path(sys.argv[1])
accelerator = None
if "--accelerate" in sys.argv:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, device_placement=False)
g = torch.Generator().manual_seed(0)
images = torch.rand(24, 1, 16, 16, generator=g)
labels = torch.arange(24) % 4
prompts = [PROMPTS[i] for i in labels.tolist()]
comp = gen.build_small_ldm(PROMPTS, tiny_ldm_config(), seed=0)
vae = gen.train_vae(comp["vae"], images, steps=6, batch_size=8, log_every=3, seed=1, accelerator=accelerator)
mean, std = gen.encode_latents(comp["vae"], images)
gen.set_latent_scaling(comp["vae"], mean)
unet = gen.train_denoiser(
    comp, mean, std, prompts, steps=6, batch_size=8, warmup_steps=2, log_every=3, seed=2, accelerator=accelerator
)
base = gen.assemble_pipeline(comp)
encoder, processor = uc.build_image_encoder(16, uc.ImageEncoderConfig(hidden=16, heads=2, projection_dim=8), seed=3)
with torch.no_grad():
    class_text = uc.pooled_text(base, PROMPTS)
enc = uc.train_image_encoder(
    encoder, images, labels, class_text, steps=6, batch_size=8, log_every=3, seed=4, accelerator=accelerator
)
embeds = uc.embed_images(encoder, images)
pipe = uc.assemble_unclip(base, encoder, processor, uc.image_normalizer(embeds), uc.unclip_unet(base.unet, 8))
ft = uc.finetune_unclip(
    pipe, mean, std, prompts, embeds, steps=6, batch_size=8, log_every=3, seed=5, accelerator=accelerator
)
if accelerator is None or accelerator.is_main_process:
    out.mkdir(parents=True, exist_ok=True)
    models = {"vae": comp["vae"], "unet": comp["unet"], "text_encoder": comp["text_encoder"]}
    models |= {"image_encoder": encoder, "unclip_unet": pipe.unet}
    weights = {f"{name}.{k}": v for name, m in models.items() for k, v in m.state_dict().items()}
    losses = [vae.loss, unet.loss, enc.loss, ft.loss]
    torch.save({"weights": weights, "losses": losses}, out / "weights.pt")
