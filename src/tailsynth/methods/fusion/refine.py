"""Refinement of fused latents: the last few steps of a DDIM schedule, then the VAE decoder.

As in the paper, no noise is added: the decoded fused latent is taken as the (nearly clean) sample
at the last ``steps`` timesteps of a ``schedule``-step DDIM schedule (for SD 1.x and 75 steps:
53, 40, 27, 14, 1). DDIM, not the PNDM/PLMS that SD 1.x ships with, because PLMS's warm-up cannot
start in the middle of a schedule. The stock ``StableDiffusionPipeline`` runs the steps, with its
prompt encoding and classifier-free guidance, through :class:`LastStepsDDIMScheduler`.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from tailsynth.errors import TailsynthError


class LastStepsDDIMScheduler(DDIMScheduler):
    """DDIM that, asked for n inference steps, runs the last n timesteps of a ``schedule``-step schedule.

    ``self.num_inference_steps`` stays ``schedule``, which is what DDIM's step size is computed from.
    """

    schedule: int = 75

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        if not 1 <= num_inference_steps <= self.schedule:
            raise TailsynthError(
                f"fusion.refine.steps must be in [0, fusion.refine.schedule = {self.schedule}], "
                f"got {num_inference_steps}"
            )
        super().set_timesteps(self.schedule, device)
        self.timesteps = self.timesteps[-num_inference_steps:]


def last_steps_scheduler(config: dict, schedule: int) -> LastStepsDDIMScheduler:
    """The scheduler from a generator's saved scheduler config (``clip_sample`` off: latents are not clipped)."""
    if not isinstance(schedule, int) or isinstance(schedule, bool) or schedule < 1:
        raise TailsynthError(f"fusion.refine.schedule must be a whole number >= 1, got {schedule!r}")
    scheduler = LastStepsDDIMScheduler.from_config(config, clip_sample=False)
    scheduler.schedule = schedule
    return scheduler


class FusionRefiner:
    """Decodes fused latents, after ``steps`` refinement steps (0: decode only), with a pipeline's weights."""

    def __init__(self, pipe: StableDiffusionPipeline, *, schedule: int):
        components = {**pipe.components, "scheduler": last_steps_scheduler(pipe.scheduler.config, schedule)}
        self.pipe = StableDiffusionPipeline(**components)
        self.pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def images(self, latents: torch.Tensor, prompts: list[str], *, steps: int, cfg: float) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] on the CPU from scaled ``latents`` (N, c, h, w)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise TailsynthError(f"fusion.refine.steps must be a whole number >= 0, got {steps!r}")
        pipe = self.pipe
        latents = latents.to(pipe.device, pipe.unet.dtype)
        if steps == 0:
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            return (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()
        side = latents.shape[-1] * pipe.vae_scale_factor
        out = pipe(
            prompt=list(prompts),
            latents=latents,
            num_inference_steps=steps,
            guidance_scale=float(cfg),
            height=side,
            width=side,
            output_type="pt",
        ).images
        return out.float().clamp(0, 1).cpu()
