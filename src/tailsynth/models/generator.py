"""The text-to-image latent diffusion generator: load a pretrained one, or build and train a small one.

Both end as a diffusers ``StableDiffusionPipeline`` folder, so everything downstream (txt2img,
img2img, GeNIe) uses the stock pipelines on either.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from tailsynth.errors import TailsynthError
from tailsynth.models.tokenizer import build_prompt_tokenizer, prompt_length
from tailsynth.train.distributed import OptimizerSteps, mean_over_processes, shard

Callback = Callable[[int, float], None]


@dataclass(frozen=True)
class SmallLDMConfig:
    """Shape of the embedded generator: the small recipe measured on the digits (2 cores, minutes)."""

    image_size: int = 32
    channels: int = 1
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_norm_groups: int = 32
    unet_channels: tuple[int, ...] = (32, 64)
    unet_norm_groups: int = 8
    attention_head_dim: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    max_length: int = 8  # raised to fit the longest prompt


def build_small_ldm(prompts: Sequence[str], config: SmallLDMConfig, seed: int = 0) -> dict:
    """Randomly initialised VAE, UNet, CLIP text encoder, tokenizer and DDPM scheduler.

    Returns a dict with the component names of ``StableDiffusionPipeline``.
    """
    torch.manual_seed(seed)
    n_down = len(config.vae_channels)
    factor = 2 ** (n_down - 1)
    if config.image_size % factor:
        raise TailsynthError(
            f"data.size must be a multiple of {factor} for the embedded generator, got {config.image_size}"
        )
    max_length = max(config.max_length, max(prompt_length(p) for p in [*prompts, ""]))
    vae = AutoencoderKL(
        in_channels=config.channels,
        out_channels=config.channels,
        down_block_types=("DownEncoderBlock2D",) * n_down,
        up_block_types=("UpDecoderBlock2D",) * n_down,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.image_size,
    )
    tokenizer = build_prompt_tokenizer([*prompts, ""], max_length=max_length)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden,
            intermediate_size=4 * config.text_hidden,
            projection_dim=config.text_hidden,
            num_hidden_layers=config.text_layers,
            num_attention_heads=max(1, config.text_hidden // 16),
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    n_unet = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.image_size // factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n_unet,
        up_block_types=("CrossAttnUpBlock2D",) * n_unet,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.unet_norm_groups,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """Yield ``steps`` index batches, reshuffling each epoch with ``generator``."""
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        yield perm[pos : pos + min(batch_size, n)]
        pos += batch_size


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


@dataclass(frozen=True)
class TrainResult:
    """What a training run ended with: ``loss`` (mean of the last logging window) and ``steps`` run."""

    loss: float
    steps: int


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    target_mse: float | None = None,
    log_every: int = 25,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    accelerator=None,
) -> TrainResult:
    """Train ``vae`` in place on ``images`` (N, C, H, W) in [0, 1].

    Runs ``steps`` steps, or stops earlier after the first window of ``log_every`` steps whose
    mean reconstruction MSE (on the [0, 1] scale) is at most ``target_mse``: simple images stop
    early, detailed ones (RGB photos) train up to ``steps``. ``callback(step, mse)`` gets each
    window's mean MSE; the loss is read back from the device once per window, never per step.
    Random draws come from a CPU generator, so a run repeats on any device.

    ``accelerator`` (an ``accelerate.Accelerator``, or None: one process) trains data-parallel: every
    process draws the same global batches and noise, encodes and decodes its contiguous share of each
    (:func:`~tailsynth.train.distributed.shard`), and the gradients are averaged over the processes, so
    N processes compute one process's update up to summation order (the VAE has no batch norm). The
    logged MSE, and so the early stop, is the global batch's. The forward pass runs at the accelerator's
    mixed precision (``runtime.train_precision``: bf16 or fp16 autocast), the loss and weights in fp32.
    """
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    gen = torch.Generator().manual_seed(seed)
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(100, steps // 10)))
    x_all = images * 2 - 1
    window = torch.zeros((), device=device)
    mse, done = float("nan"), 0
    steps_of = OptimizerSteps(opt, vae.parameters(), accelerator)
    for step, idx in enumerate(_batches(len(x_all), batch_size, steps, gen)):
        mine = shard(len(idx), rank, world)
        x = x_all[idx[mine]].to(device)
        with steps_of.autocast():
            posterior = vae.encode(x).latent_dist
            # The global batch's noise, drawn whole in every process: each keeps its rows.
            noise = torch.randn((len(idx), *posterior.mean.shape[1:]), generator=gen)[mine]
            z = posterior.mean + posterior.std * noise.to(device)
            recon = vae.decode(z).sample
        rec_loss = F.mse_loss(recon.float(), x)  # losses in fp32 whatever the autocast
        loss = rec_loss + kl_weight * posterior.kl().float().mean() / x[0].numel()
        steps_of.step(loss)
        sched.step()
        window += rec_loss.detach()
        done = step + 1
        if done % log_every == 0 or done == steps:
            mse = _window_mean(mean_over_processes(window, world), done, log_every) / 4  # on the [0, 1] scale
            window.zero_()
            if callback is not None:
                callback(step, mse)
            if target_mse is not None and mse <= target_mse:
                break
    vae.eval()
    return TrainResult(mse, done)


def _window_mean(window: torch.Tensor, done: int, every: int) -> float:
    """Mean of the losses summed in ``window`` since the last multiple of ``every`` steps."""
    n = done % every or every
    return window.item() / n


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of ``images`` (N, C, H, W) in [0, 1], both (N, c, h, w), unscaled, on the CPU."""
    vae.eval()
    device = next(vae.parameters()).device
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        post = vae.encode((images[start : start + batch_size] * 2 - 1).to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


def set_latent_scaling(vae: AutoencoderKL, latent_mean: torch.Tensor) -> float:
    """Set the VAE's ``scaling_factor`` to 1/std of the latents, as SD does; return it."""
    factor = float(1.0 / latent_mean.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=factor)
    return factor


def train_denoiser(
    components: dict,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    prompts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 5e-4,
    warmup_steps: int = 100,
    uncond_prob: float = 0.1,
    ema_decay: float = 0.999,
    train_text_encoder: bool = True,
    log_every: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    accelerator=None,
) -> TrainResult:
    """Train the UNet (and the text encoder) with the epsilon objective; load their EMA weights at the end.

    ``latent_mean``/``latent_std`` (N, c, h, w) are the unscaled VAE posteriors of the N training
    images and ``prompts`` their N prompts. A fraction ``uncond_prob`` of prompts is replaced by
    the empty prompt so classifier-free guidance works. The lr warms up over ``warmup_steps``, then
    stays constant (a decaying lr slowed down learning the prompt conditioning). The text encoder runs once per distinct
    prompt in a batch (there are few: one per class, and the empty one). ``callback(step, loss)``
    gets the mean loss of each window of ``log_every`` steps, read back from the device once per
    window. Returns the mean loss of the last window. Noise, timesteps and batches are drawn on
    the CPU from a seeded generator, so a run repeats on any device.

    ``accelerator`` (or None: one process) trains data-parallel as :func:`train_vae` does: the same
    global draws in every process, each its contiguous share of the batch, gradients averaged, the
    logged loss the global batch's; every process keeps the same EMA; the forward pass at the
    accelerator's mixed precision.
    """
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    unet, text_encoder, tokenizer, noise_sched = (
        components["unet"],
        components["text_encoder"],
        components["tokenizer"],
        components["scheduler"],
    )
    scale = components["vae"].config.scaling_factor
    gen = torch.Generator().manual_seed(seed)
    # Distinct prompts (and the empty one, last) once; each image keeps the row of its prompt.
    where = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    prompt_row = torch.tensor([where[p] for p in prompts])
    distinct = list(where)
    all_ids = _token_ids(tokenizer, [*distinct, ""])
    empty_row = len(distinct)
    unet.to(device)
    text_encoder.to(device)
    modules = [unet] + ([text_encoder] if train_text_encoder else [])
    params = [p for m in modules for p in m.parameters()]
    ema = [copy.deepcopy(m).requires_grad_(False) for m in modules]
    for m in modules:
        m.train()
    text_encoder.requires_grad_(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup_steps))
    steps_of = OptimizerSteps(opt, params, accelerator)
    ema_params = [list(e.parameters()) for e in ema]
    live_params = [list(m.parameters()) for m in modules]
    window = torch.zeros((), device=device)
    last = float("nan")
    for step, idx in enumerate(_batches(len(latent_mean), batch_size, steps, gen)):
        z0 = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)  # on the CPU, as the draws: the same on every device
        rows = prompt_row[idx].clone()
        rows[torch.rand(len(idx), generator=gen) < uncond_prob] = empty_row
        mine = shard(len(idx), rank, world)  # drawn for the global batch: this process's rows of it
        zt, noise, t, rows = zt[mine], noise[mine], t[mine], rows[mine]
        used, rows = torch.unique(rows, return_inverse=True)
        zt, noise, t = zt.to(device), noise.to(device), t.to(device)
        with steps_of.autocast():
            with torch.set_grad_enabled(train_text_encoder):
                hidden = text_encoder(all_ids[used].to(device))[0]  # (U, L, D): one row per distinct prompt
                cond = _pick_rows(hidden, rows.to(device))
            pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), noise)
        steps_of.step(loss)
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, m in zip(ema_params, live_params, strict=True):
                torch._foreach_lerp_(e, m, 1 - decay)
        window += loss.detach()
        done = step + 1
        if done % log_every == 0 or done == steps:
            last = _window_mean(mean_over_processes(window, world), done, log_every)
            window.zero_()
            if callback is not None:
                callback(step, last)
    with torch.no_grad():
        for m, e in zip(modules, ema, strict=True):
            m.load_state_dict(e.state_dict())
            m.eval()
    text_encoder.eval()
    return TrainResult(last, steps)


def _pick_rows(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``hidden[rows]`` for (U, ...) ``hidden`` and (B,) ``rows``, with a backward that repeats bit for bit.

    The backward of advanced indexing accumulates with ``index_put_``, which adds in a
    thread-dependent order on the CPU (two cold runs trained different text encoders on 2 cores).
    A one-hot matrix product gives the same forward values and a deterministic backward.
    """
    pick = F.one_hot(rows, hidden.shape[0]).to(hidden.dtype)
    return (pick @ hidden.flatten(1)).view(len(rows), *hidden.shape[1:])


def _token_ids(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def assemble_pipeline(components: dict) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` around trained components, without a safety checker."""
    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def load_pipeline(
    model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """Load a text-to-image pipeline from a local diffusers folder or a hub id.

    Raises ``TailsynthError`` naming ``model`` when it cannot be loaded (missing folder,
    unknown id, no network and not in the local cache).
    """
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, dtype=dtype, use_safetensors=True, safety_checker=None, requires_safety_checker=False
        )
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, HTTP errors...
        # The whole reason on one line: hub errors name the missing file or id late in their message.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TailsynthError(
            f"generator model {model!r} could not be loaded: {reason} Set generator.model to a local diffusers "
            "folder (model_index.json and safetensors weights) or a hub id that is in the local cache."
        ) from exc
    return pipe.to(device)


def pipeline_resolution(pipe: StableDiffusionPipeline) -> int:
    """The image side the pipeline's UNet was trained for (e.g. 512 for SD 1.5, 32 for the embedded one)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def saved_pipeline_resolution(folder: str | Path) -> int:
    """:func:`pipeline_resolution` of a saved pipeline folder, from its unet/ and vae/ configs alone
    (the UNet's sample_size times the VAE's downsampling, 2^(len(block_out_channels) - 1)); the VAE's
    own sample_size is not what the pipeline runs at."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TailsynthError(
            f"{folder}: cannot read the pipeline resolution from unet/config.json and vae/config.json ({exc}); "
            "re-run the generator stage"
        ) from exc


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
