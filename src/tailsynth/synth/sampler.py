"""Text-to-image and image-to-image sampling with the stock diffusers pipelines, one seed per image."""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from tailsynth.data.images import match_channels, resize_batch
from tailsynth.errors import TailsynthError
from tailsynth.models.generator import pipeline_resolution

SCHEDULERS = ("dpm_solver", "ddim")


def make_scheduler(name: str, config: dict):
    """A sampling scheduler built from the generator's saved scheduler config."""
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler.from_config(config)
    if name == "ddim":
        # A saved DDPM config carries clip_sample=True, which would clip latents during sampling.
        return DDIMScheduler.from_config(config, clip_sample=False)
    raise TailsynthError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def prepare_for_sampling(pipe, scheduler: str) -> None:
    """Give a stock pipeline the sampling ``scheduler`` (from its own config), channels-last UNet and VAE
    and no progress bar."""
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    # channels_last convolutions: 1.2x faster sampling of the embedded generator on 2 CPU cores
    # (64 images, 20 steps), and the layout CUDA's fp16 convolutions prefer.
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)


class LatentDiffusionSampler:
    """Wraps a ``StableDiffusionPipeline`` and an ``StableDiffusionImg2ImgPipeline`` sharing its weights.

    Every image gets its own ``torch.Generator`` (on the CPU, so outputs do not depend on the
    device), which makes an image independent of the batch it is generated in.
    """

    def __init__(self, pipe: StableDiffusionPipeline, scheduler: str = "dpm_solver"):
        prepare_for_sampling(pipe, scheduler)
        self.txt2img = pipe
        self.img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        self.img2img.set_progress_bar_config(disable=True)
        self.resolution = pipeline_resolution(pipe)
        self.channels = int(pipe.vae.config.in_channels)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        steps: int,
        cfg: float,
        sources: torch.Tensor | None = None,
        r: float = 1.0,
    ) -> torch.Tensor:
        """Images (N, C_gen, R, R) in [0, 1].

        Without ``sources`` this is text-to-image. With ``sources`` (N, C, H, W) in [0, 1] each
        source is noised to ratio ``r`` and denoised with its prompt (``strength=r``, so
        ⌊r·steps⌋ denoising steps).
        """
        if not 0 < r <= 1:
            raise TailsynthError(f"noise ratio r must be in (0, 1], got {r}")
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        common = dict(
            prompt=list(prompts),
            num_inference_steps=int(steps),
            guidance_scale=float(cfg),
            generator=gens,
            output_type="pt",
        )
        if sources is None:
            out = self.txt2img(height=self.resolution, width=self.resolution, **common).images
        else:
            image = resize_batch(match_channels(sources.float(), self.channels), self.resolution)
            image = image.to(self.txt2img.device, self.txt2img.unet.dtype)
            out = self.img2img(image=image, strength=float(r), **common).images
        return out.float().clamp(0, 1).cpu()
