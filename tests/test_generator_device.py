"""Generator training keeps every module input on the model's device (checked on ``meta``, no GPU needed).

See ``device_check.py``: the models live on ``meta`` and a hook asserts that each module's inputs
sit on its weights' device, which is what crashes on CUDA when a tensor is left on the CPU.
"""

import torch
from conftest import tiny_ldm_config
from device_check import run_on_meta

from tailsynth.models import generator as gen

PROMPTS = ["a photo of a zero", "a photo of a one"]


def tiny_components():
    return gen.build_small_ldm(PROMPTS, tiny_ldm_config(), seed=0)


def test_train_vae_feeds_the_vae_on_its_device():
    comp = tiny_components()
    images = torch.rand(8, 1, 16, 16)
    checked = run_on_meta(lambda: gen.train_vae(comp["vae"], images, steps=2, batch_size=4, device="meta"))
    assert "Conv2d" in checked  # the encoder ran under the hook


def test_encode_latents_feeds_the_vae_on_its_device():
    comp = tiny_components()
    comp["vae"].to("meta")
    checked = run_on_meta(lambda: gen.encode_latents(comp["vae"], torch.rand(8, 1, 16, 16), batch_size=4))
    assert "Conv2d" in checked


def test_train_denoiser_feeds_unet_and_text_encoder_on_their_device():
    comp = tiny_components()
    mean, std = torch.randn(8, 4, 4, 4), torch.rand(8, 4, 4, 4)
    comp["vae"].register_to_config(scaling_factor=1.0)
    prompts = [PROMPTS[i % 2] for i in range(8)]
    checked = run_on_meta(
        lambda: gen.train_denoiser(comp, mean, std, prompts, steps=2, batch_size=4, warmup_steps=1, device="meta")
    )
    assert {"Conv2d", "Embedding", "Linear"} <= set(checked)  # UNet and text encoder ran under the hook
