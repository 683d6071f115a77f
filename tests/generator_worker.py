"""Train the tiny latent diffusion model (VAE, then UNet and text encoder) in however many processes it was
launched in.

    python generator_worker.py OUT [--accelerate]     (or under ``accelerate launch --multi_gpu --num_processes 2``)

Writes ``OUT/weights.pt`` (main process): the VAE's, UNet's and text encoder's weights, and the logged losses.
"""

import sys
from pathlib import Path

import torch
from conftest import tiny_ldm_config

from tailsynth.models import generator as gen

PROMPTS = ["a photo of a zero", "a photo of a one", "a photo of a two", "a photo of a three"]
out = Path(sys.argv[1])
accelerator = None
if "--accelerate" in sys.argv:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, device_placement=False)
g = torch.Generator().manual_seed(0)
images = torch.rand(24, 1, 16, 16, generator=g)
prompts = [PROMPTS[i % 4] for i in range(24)]
comp = gen.build_small_ldm(PROMPTS, tiny_ldm_config(), seed=0)
vae = gen.train_vae(comp["vae"], images, steps=6, batch_size=8, log_every=3, seed=1, accelerator=accelerator)
mean, std = gen.encode_latents(comp["vae"], images)
gen.set_latent_scaling(comp["vae"], mean)
unet = gen.train_denoiser(
    comp, mean, std, prompts, steps=6, batch_size=8, warmup_steps=2, log_every=3, seed=2, accelerator=accelerator
)
if accelerator is None or accelerator.is_main_process:
    out.mkdir(parents=True, exist_ok=True)
    weights = {f"{name}.{k}": v for name in ("vae", "unet", "text_encoder") for k, v in comp[name].state_dict().items()}
    torch.save({"weights": weights, "losses": [vae.loss, unet.loss]}, out / "weights.pt")
