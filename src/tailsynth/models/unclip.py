"""The dual-conditioned (text + image) generator: a ``StableUnCLIPImg2ImgPipeline`` folder.

The embedded one is built from the trained text-to-image generator the way SD 2.1 unCLIP was built
from SD 2.1: a CLIP image encoder (here trained on the pool, with a class term against the text
encoder's pooled prompt embeddings and an instance term between two augmented views), and the
text-to-image UNet given a projection input for the noised image embedding, zero-initialised so
that it starts as exactly the text-to-image model, then fine-tuned with the embedding as an extra
condition (noised as the pipeline noises it, and dropped as the pipeline's unconditional branch
drops it: the whole class-label vector set to zero).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from diffusers import (
    DDPMScheduler,
    StableDiffusionPipeline,
    StableUnCLIPImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from tailsynth.data.images import match_channels
from tailsynth.errors import TailsynthError
from tailsynth.models.generator import Callback, TrainResult, _batches, _lr_lambda, _token_ids, _window_mean
from tailsynth.train.distributed import OptimizerSteps, gather_rows, mean_over_processes, shard


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Shape of the embedded CLIP image encoder (~112 k parameters at the defaults)."""

    patch_size: int = 4
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    projection_dim: int = 64


def build_image_encoder(image_size: int, config: ImageEncoderConfig, seed: int = 0):
    """A randomly initialised ``CLIPVisionModelWithProjection`` (3-channel input) and its processor."""
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=image_size,
            patch_size=config.patch_size,
            hidden_size=config.hidden,
            intermediate_size=4 * config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            projection_dim=config.projection_dim,
            num_channels=3,
            hidden_act="quick_gelu",
        )
    )
    # PIL images in, the same normalisation as embed_images: RGB, [0, 1] -> [-1, 1].
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_convert_rgb=True,
    )
    return encoder, processor


def encoder_input(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> the encoder's (N, 3, H, W) in [-1, 1] (gray copied to RGB)."""
    return match_channels(images.float(), 3) * 2 - 1


@torch.no_grad()
def embed_images(encoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Image embeddings (N, projection_dim) of ``images`` (N, C, H, W) in [0, 1], on the encoder's device."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = [
        encoder(encoder_input(images[i : i + batch_size]).to(device)).image_embeds
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)



@torch.no_grad()
def processor_embeddings(encoder, processor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Image embeddings (N, projection_dim) of uint8 ``images`` (N, C, H, W) through ``processor`` (the
    pipeline's feature extractor) and ``encoder``: what the pipeline computes from an ``image=`` argument,
    for any unCLIP model. For the embedded encoder it equals :func:`embed_images` of ``images / 255``."""
    encoder.eval()
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size].to(torch.uint8).cpu()
        pils = [Image.fromarray(im.permute(1, 2, 0).squeeze(-1).numpy()) for im in chunk]
        pixels = processor(images=pils, return_tensors="pt").pixel_values
        out.append(encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds)
    return torch.cat(out)


@torch.no_grad()
def pooled_text(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's pooled outputs (K, T) of ``prompts``: the class targets of the image encoder."""
    return pipe.text_encoder(_token_ids(pipe.tokenizer, prompts).to(pipe.text_encoder.device)).pooler_output

def _augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """A random view of each image of ``x`` (N, 3, H, W) in [-1, 1]: a shift of up to ``shift`` pixels
    (the border filled with black) and an intensity scale in [0.8, 1.2], both drawn per image from ``gen``."""
    n, _, h, w = x.shape
    pad = F.pad(x + 1, (shift, shift, shift, shift))  # in [0, 2], so zero padding is black
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    shifted = torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    scale = (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)).to(x.device)
    return (shifted * scale - 1).clamp(-1, 1)


class _LossWindow:
    """Mean loss of each window of ``every`` steps (and of the last, shorter one), read back from the
    device once per window and averaged over the ``world`` processes (each its share of the batch);
    ``callback(step, mean)`` gets each. ``last`` is the latest mean."""

    def __init__(self, every: int, steps: int, callback: Callback | None, device: str | torch.device, world: int = 1):
        self.every, self.steps, self.callback, self.world = every, steps, callback, world
        self.total = torch.zeros((), device=device)
        self.last = float("nan")

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.total += loss.detach()
        done = step + 1
        if done % self.every == 0 or done == self.steps:
            self.last = _window_mean(mean_over_processes(self.total, self.world), done, self.every)
            self.total.zero_()
            if self.callback is not None:
                self.callback(step, self.last)


def _rank_world(accelerator) -> tuple[int, int]:
    return (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)


def train_image_encoder(
    encoder,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_text: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    temperature: float = 0.1,
    log_every: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    accelerator=None,
) -> TrainResult:
    """Train ``encoder`` in place on ``images`` (N, C, H, W) in [0, 1] with class ``labels`` (N,).

    Loss = a class term (cross-entropy of each image embedding against the K classes' pooled text
    embeddings ``class_text`` (K, T), through a learned T -> projection_dim linear map and a learned
    logit scale) + an instance term (InfoNCE at ``temperature`` between two augmented views of each
    image of the batch). The first ties the embedding to the class the prompt names; the second
    makes it tell images of one class apart, which is what lets the image steer the sample.
    Batches, views and the map's initialisation are drawn from CPU generators seeded by ``seed``.

    ``accelerator`` (an ``accelerate.Accelerator``, or None: one process in fp32) trains data-parallel and
    at its mixed precision: every process draws the global batch and its views, embeds its contiguous
    share, and gathers the whole batch's embeddings, so both loss terms contrast the global batch as one
    process does; gradients are averaged over the processes.
    """
    rank, world = _rank_world(accelerator)
    gen = torch.Generator().manual_seed(seed)
    dim = encoder.config.projection_dim
    text_map = torch.nn.Linear(class_text.shape[1], dim, bias=False)
    with torch.no_grad():
        text_map.weight.copy_(torch.randn(text_map.weight.shape, generator=gen) / class_text.shape[1] ** 0.5)
    logit_scale = torch.nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial value
    encoder.to(device).train()
    text_map.to(device)
    class_text = class_text.to(device)
    params = [*encoder.parameters(), *text_map.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(100, steps // 10)))
    x_all = encoder_input(images)
    log = _LossWindow(log_every, steps, callback, device, world)
    steps_of = OptimizerSteps(opt, params, accelerator)
    for step, idx in enumerate(_batches(len(x_all), batch_size, steps, gen)):
        x = x_all[idx]
        mine = shard(len(idx), rank, world)  # the global batch's views, drawn whole: this process's rows
        v1 = _augment(x, gen)[mine].to(device)
        v2 = _augment(x, gen)[mine].to(device)
        with steps_of.autocast():
            e1, e2 = encoder(v1).image_embeds, encoder(v2).image_embeds
            text = text_map(class_text)
        # Every process computes the global batch's loss from the gathered embeddings. The gather's backward
        # sums the N processes' (equal) gradients of each embedding, and the mean over processes of the
        # parameter gradients divides the N back out: the one-process gradient.
        e1 = F.normalize(gather_rows(e1.float(), world), dim=-1)
        e2 = F.normalize(gather_rows(e2.float(), world), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        y = labels[idx].to(device)
        class_loss = F.cross_entropy(logit_scale.exp().clamp(max=100) * e1 @ text.T, y)
        same = torch.arange(len(idx), device=device)
        sim = e1 @ e2.T / temperature
        instance_loss = (F.cross_entropy(sim, same) + F.cross_entropy(sim.T, same)) / 2
        loss = class_loss + instance_loss
        steps_of.step(loss)
        sched.step()
        log.add(step, loss)
    encoder.eval()
    return TrainResult(log.last, steps)


def unclip_unet(base: UNet2DConditionModel, embedding_dim: int) -> UNet2DConditionModel:
    """``base`` with a projection input for a (noised image embedding, noise-level embedding) pair,
    2 x ``embedding_dim`` wide, whose last layer is zero: its outputs equal ``base``'s exactly."""
    # Without "_use_default_values" (the keys the base was built without): from_config would restore
    # their defaults over ours.
    config = {k: v for k, v in base.config.items() if k != "_use_default_values"}
    config.update(class_embed_type="projection", projection_class_embeddings_input_dim=2 * embedding_dim)
    unet = UNet2DConditionModel.from_config(config)
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise RuntimeError(f"unexpected UNet weights: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        unet.class_embedding.linear_2.weight.zero_()
        unet.class_embedding.linear_2.bias.zero_()
    return unet.to(base.device, base.dtype)


def image_normalizer(embeddings: torch.Tensor) -> StableUnCLIPImageNormalizer:
    """The pipeline's embedding normaliser, with the mean and std of ``embeddings`` (N, D): the
    defaults (0, 1) would put every noise level on the wrong scale for a small encoder."""
    norm = StableUnCLIPImageNormalizer(embedding_dim=embeddings.shape[1])
    with torch.no_grad():
        norm.mean.copy_(embeddings.mean(0, keepdim=True))
        norm.std.copy_(embeddings.std(0, keepdim=True).clamp_min(1e-6))
    return norm


def assemble_unclip(base: StableDiffusionPipeline, encoder, processor, normalizer, unet) -> StableUnCLIPImg2ImgPipeline:
    """The dual-conditioned pipeline: ``base``'s VAE, text encoder, tokenizer and scheduler, the new
    image encoder, normaliser and ``unet``; image embeddings are noised on a cosine DDPM schedule."""
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=processor,
        image_encoder=encoder,
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        unet=unet,
        scheduler=base.scheduler,
        vae=base.vae,
    )


def condition_drops(u: torch.Tensor, both: float, image: float, text: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows lose their text and which their image, from uniform draws ``u`` (N,) in [0, 1):
    [0, both) lose both, [both, both + text) the text only, then ``image`` more the image only."""
    no_text = u < both + text
    no_image = (u < both) | ((u >= both + text) & (u < both + text + image))
    return no_text, no_image


def finetune_unclip(
    pipe: StableUnCLIPImg2ImgPipeline,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    prompts: list[str],
    image_embeds: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-4,
    class_lr: float = 1e-3,
    drop_both: float = 0.1,
    drop_image: float = 0.1,
    drop_text: float = 0.1,
    ema_decay: float = 0.999,
    min_timestep: int = 0,
    log_every: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    accelerator=None,
) -> TrainResult:
    """Fine-tune ``pipe.unet`` (epsilon objective) on N images given as unscaled VAE posteriors
    ``latent_mean``/``latent_std`` (N, c, h, w), their ``prompts`` (N) and ``image_embeds`` (N, D).

    Each image is conditioned on its own embedding, noised at a uniform noise level exactly as the
    pipeline noises it (``pipe.noise_image_embeddings``). Fractions ``drop_both`` / ``drop_image`` /
    ``drop_text`` of each batch lose both conditions / the image / the text; a dropped image is the
    whole class-label vector set to 0, which is what the pipeline's unconditional branch feeds.
    The projection input trains at ``class_lr``, the rest of the UNet at ``lr``; the EMA weights
    are loaded at the end. The text encoder stays frozen. Draws come from a seeded CPU generator.

    Timesteps are drawn uniformly from [``min_timestep``, T): the embedding tells the model which
    instance of the class to draw, which a latent at a low timestep already shows, so the steps
    spent there barely teach the model to use it (``benchmarks/unclip_recipe.py`` measures the pull).

    ``accelerator`` (or None: one process in fp32) trains data-parallel and at its mixed precision as
    :func:`~tailsynth.models.generator.train_denoiser` does: the same global draws in every process, each
    its contiguous share of the batch, gradients averaged, the logged loss the global batch's.
    """
    rank, world = _rank_world(accelerator)
    total = int(pipe.scheduler.config.num_train_timesteps)
    if not 0 <= min_timestep < total:
        raise TailsynthError(f"generator_unclip.unet.min_timestep must be in [0, {total}), got {min_timestep}")
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    scale = pipe.vae.config.scaling_factor
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(seed)
    distinct = list(dict.fromkeys(prompts))
    where = {p: i for i, p in enumerate(distinct)}
    prompt_row = torch.tensor([where[p] for p in prompts])
    with torch.no_grad():
        text_encoder.to(device).eval()
        hidden_all = text_encoder(_token_ids(tokenizer, [*distinct, ""]).to(device))[0]  # (U + 1, L, T)
    empty_row = len(distinct)
    unet.to(device).train()
    head = [p for n, p in unet.named_parameters() if n.startswith("class_embedding.")]
    body = [p for n, p in unet.named_parameters() if not n.startswith("class_embedding.")]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": class_lr}], weight_decay=1e-2)
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_params, live_params = list(ema.parameters()), list(unet.parameters())
    levels = pipe.image_noising_scheduler.config.num_train_timesteps
    log = _LossWindow(log_every, steps, callback, device, world)
    steps_of = OptimizerSteps(opt, live_params, accelerator)
    for step, idx in enumerate(_batches(len(latent_mean), batch_size, steps, gen)):
        n = len(idx)
        z0 = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(min_timestep, noise_sched.config.num_train_timesteps, (n,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        level = torch.randint(0, levels, (n,), generator=gen)
        embed_noise = torch.randn(image_embeds[idx].shape, generator=gen)
        no_text, no_image = condition_drops(torch.rand(n, generator=gen), drop_both, drop_image, drop_text)
        rows = torch.where(no_text, torch.full_like(prompt_row[idx], empty_row), prompt_row[idx])
        mine = shard(n, rank, world)  # drawn for the global batch: this process's rows of it
        idx, zt, t, noise, level = idx[mine], zt[mine], t[mine], noise[mine], level[mine]
        embed_noise, no_image, rows = embed_noise[mine], no_image[mine], rows[mine]
        with torch.no_grad():
            cond_image = torch.cat(
                [
                    pipe.noise_image_embeddings(
                        image_embeds[i : i + 1].to(device), int(lv), noise=en.view(1, -1).to(device)
                    )
                    for i, lv, en in zip(idx.tolist(), level.tolist(), embed_noise, strict=True)
                ]
            )
            cond_image[no_image.to(device)] = 0
            cond_text = hidden_all[rows.to(device)]
        with steps_of.autocast():
            pred = unet(zt.to(device), t.to(device), encoder_hidden_states=cond_text, class_labels=cond_image).sample
        loss = F.mse_loss(pred.float(), noise.to(device))
        steps_of.step(loss)
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, live_params, 1 - decay)
        log.add(step, loss)
    with torch.no_grad():
        unet.load_state_dict(ema.state_dict())
    unet.eval()
    return TrainResult(log.last, steps)


def load_unclip(
    model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, param: str = "model"
) -> StableUnCLIPImg2ImgPipeline:
    """Load a dual-conditioned pipeline from a local diffusers folder (e.g. ``models/generator_unclip``)
    or a hub id (e.g. an SD 2.1 unCLIP model), safetensors weights only.

    Raises ``TailsynthError`` naming ``param`` and ``model`` when it cannot be loaded.
    """
    try:
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(model, dtype=dtype, use_safetensors=True)
    except Exception as exc:  # diffusers raises OSError, ValueError, HTTP errors...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TailsynthError(
            f"{param} {model!r} could not be loaded as a StableUnCLIPImg2ImgPipeline: {reason} Set {param} to a local "
            "diffusers folder (model_index.json and safetensors weights) or a hub id that is in the local cache."
        ) from exc
    return pipe.to(device)
