"""Sampling the dual-conditioned (text + image) generator: the stock ``StableUnCLIPImg2ImgPipeline``,
one seed per image, an optional dropout on the image embedding and optional feedback guidance."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusers import StableUnCLIPImg2ImgPipeline

from tailsynth.models.generator import pipeline_resolution
from tailsynth.models.unclip import processor_embeddings
from tailsynth.seeding import derive_seed
from tailsynth.synth.guidance import FeedbackGuidance
from tailsynth.synth.sampler import prepare_for_sampling


def embedding_dropout_mask(seed: int, dim: int, p: float) -> torch.Tensor:
    """The dropout mask (dim,) of one row's image embedding: 0 with probability ``p``, else 1, drawn
    from the row's own ``seed`` (so it does not depend on the batch). Kept entries are not rescaled:
    dropping an entry zeroes it, as the paper describes, without inflating the others."""
    if p == 0:
        return torch.ones(dim)
    rng = np.random.default_rng(derive_seed(int(seed), "embedding_dropout"))
    return torch.from_numpy((rng.random(dim) >= p).astype(np.float32))


@contextlib.contextmanager
def image_dropped(unet):
    """Inside: every UNet call gets the all-zero image condition (``class_labels``), which is what the
    pipeline's unconditional branch feeds and what the fine-tune trains for a dropped image; text-only
    sampling of the dual-conditioned model."""

    def zero(module, args, kwargs):
        if kwargs.get("class_labels") is not None:
            kwargs["class_labels"] = torch.zeros_like(kwargs["class_labels"])
        return args, kwargs

    handle = unet.register_forward_pre_hook(zero, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class UnCLIPSampler:
    """Wraps a ``StableUnCLIPImg2ImgPipeline`` (any: the embedded one or e.g. SD 2.1 unCLIP).

    Every image gets its own CPU ``torch.Generator``; the pipeline draws the image embedding's
    noise and then the initial latent from it, so an image does not depend on its batch.
    """

    def __init__(self, pipe: StableUnCLIPImg2ImgPipeline, scheduler: str = "dpm_solver"):
        prepare_for_sampling(pipe, scheduler)
        self.pipe = pipe
        self.resolution = pipeline_resolution(pipe)
        self.channels = int(pipe.vae.config.in_channels)
        self.embedding_dim = int(pipe.image_encoder.config.projection_dim)
        self.noise_levels = int(pipe.image_noising_scheduler.config.num_train_timesteps)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (N, D) of uint8 ``images`` (N, C, H, W), through the pipeline's own feature
        extractor and image encoder (what the pipeline does with an ``image=`` argument)."""
        return processor_embeddings(self.pipe.image_encoder, self.pipe.feature_extractor, images)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        steps: int,
        cfg: float,
        cond_images: torch.Tensor | None = None,
        noise_level: int = 0,
        dropout: float = 0.0,
        guidance: FeedbackGuidance | None = None,
    ) -> torch.Tensor:
        """Images (N, C_gen, R, R) in [0, 1].

        With ``cond_images`` (uint8, N, C, H, W) row i is conditioned on prompt i and image i's
        embedding (entries dropped at rate ``dropout`` with the row's mask, then noised by the
        pipeline at ``noise_level``); without, on the prompt alone (:func:`image_dropped`).
        ``guidance`` steers every row toward a higher criterion (its ``targets`` are the rows' classes).
        """
        n = len(prompts)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        device, dtype = self.pipe.device, self.pipe.unet.dtype
        if cond_images is None:
            embeds = torch.zeros(n, self.embedding_dim, device=device, dtype=dtype)
        else:
            masks = torch.stack([embedding_dropout_mask(s, self.embedding_dim, dropout) for s in seeds])
            embeds = self.embed(cond_images) * masks.to(device, dtype)
        kwargs = dict(
            prompt=list(prompts),
            image_embeds=embeds,
            noise_level=int(noise_level),
            num_inference_steps=int(steps),
            guidance_scale=float(cfg),
            generator=gens,
            height=self.resolution,
            width=self.resolution,
            output_type="pt",
        )
        with contextlib.ExitStack() as stack:
            if cond_images is None:
                stack.enter_context(image_dropped(self.pipe.unet))
            if guidance is not None:
                stack.enter_context(guidance.attached(self.pipe))
                kwargs["callback"] = guidance.legacy_callback(self.pipe)
            out = self.pipe(**kwargs).images
        return out.float().clamp(0, 1).cpu()
