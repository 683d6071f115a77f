"""Fit a classifier for a fixed number of optimiser steps, with optional class- or group-balanced sampling.

A fixed step count (not epochs) keeps methods comparable when they add different amounts of data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler, WeightedRandomSampler

from tailsynth.data.stream import ImageSet, batches
from tailsynth.methods.augment import augment_batch
from tailsynth.models.classifier import Classifier
from tailsynth.train.distributed import global_batch, local_batch, shard

ImageTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FitConfig:
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    balanced: bool | str = True  # True: class-balanced; "group": class- then group-balanced; False: uniform
    label_smoothing: float = 0.0


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights: 1/count(label) for class indices (N,), so every class is drawn equally often.

    For multi-hot ``labels`` (N, K), the sum of 1/count(c) over the sample's labels c: the
    class-aware re-sampling of Wu et al. 2020 ("Distribution-Balanced Loss"), which picks a label
    uniformly, then one of its images uniformly, so that every label is picked equally often (an
    image with co-occurring labels is drawn for each of them). Samples with no label (e.g. "No
    Finding") form one more label of their own.
    """
    if labels.ndim == 2:
        positive = labels > 0
        counts = positive.sum(0).clamp_min(1).float()
        empty = ~positive.any(1)
        return torch.where(empty, 1.0 / empty.sum().clamp_min(1), (positive.float() / counts).sum(1))
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).float()
    return 1.0 / counts[labels]


def group_balanced_weights(labels: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights: every class is drawn equally often and, within a class, every group present.

    ``groups`` (N,) holds an integer group code per sample (e.g. its context). Weight =
    1 / (groups present in the sample's class × samples in its (class, group) cell).
    """
    stride = int(groups.max()) + 1
    cells, inverse, cell_counts = torch.unique(labels * stride + groups, return_inverse=True, return_counts=True)
    cells_of_class = torch.bincount(cells // stride, minlength=num_classes)
    return 1.0 / (cells_of_class[labels] * cell_counts[inverse]).float()


def draw_indices(
    labels: torch.Tensor,
    num_classes: int,
    config: FitConfig,
    gen: torch.Generator,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices into ``labels`` of every draw of the run, (steps * batch_size,): draw n is image ``out[n]``.

    ``groups`` (N,) integer group codes are needed for ``config.balanced == "group"``.
    """
    n_draws = config.steps * config.batch_size
    if config.balanced == "group":
        if groups is None:
            raise ValueError("group-balanced sampling needs a group per sample")
        weights = group_balanced_weights(labels, groups, num_classes)
        sampler = WeightedRandomSampler(weights, n_draws, replacement=True, generator=gen)
    elif config.balanced:
        weights = class_balanced_weights(labels, num_classes)
        sampler = WeightedRandomSampler(weights, n_draws, replacement=True, generator=gen)
    else:
        sampler = RandomSampler(labels, replacement=True, num_samples=n_draws, generator=gen)
    return torch.tensor(list(sampler), dtype=torch.int64)


def draw_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """The generators of draws ``start`` .. ``stop - 1``: draw n's augmentation is seeded by (seed, n) only.

    Keying the randomness by draw number keeps runs identical whatever the batching of the augmentation.
    """
    return [torch.Generator().manual_seed(seed * 1_000_003 + n) for n in range(start, stop)]


def fit_classifier(
    model: Classifier,
    images: ImageSet,
    labels: torch.Tensor,
    config: FitConfig,
    *,
    seed: int = 0,
    transform: ImageTransform | None = None,
    batch_transform: BatchTransform | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, float], None] | None = None,
    log_every: int = 1,
    groups: torch.Tensor | None = None,
    accelerator=None,
    workers: int = 0,
) -> Classifier:
    """Train ``model`` in place on ``images`` (N, C, H, W; uint8 or float in [0, 1], or an
    :class:`~tailsynth.data.stream.ImageFiles` streamed from disk by ``workers`` DataLoader processes,
    with the same batches as the images in memory) and ``labels``: class
    indices (N,), trained with softmax cross-entropy, or multi-hot rows (N, K), trained with
    binary cross-entropy per class (multi-label; ``balanced`` then re-samples by label, see
    :func:`class_balanced_weights`; group balancing needs class indices).

    ``transform`` augments one image (an :class:`~tailsynth.methods.augment.Augmentation` runs
    on the whole batch at once, on ``device``); ``batch_transform`` (CutMix, MixUp) maps a batch
    and its integer labels to a batch and soft labels (N, K). ``images`` may stay on the CPU:
    each batch is gathered there and moved to ``device``. ``callback(step, loss)`` gets the mean
    loss of every ``log_every`` steps (and of the last, shorter window), read back from the device
    once per window: a per-step read would stall a GPU every step. ``groups`` (N,) integer group
    codes serve ``config.balanced == "group"``. Returns the model in eval mode.

    ``accelerator`` (an ``accelerate.Accelerator``, or None: one process in fp32) trains data-parallel
    and in its mixed precision: every process draws the same global batches and trains on its
    contiguous share of each (:mod:`tailsynth.train.distributed`), with the batch norm and dropout of
    the global batch, so N processes compute one process's updates up to summation order. CutMix and MixUp pair
    images within a process's share. ``device`` is this process's device.
    """
    torch.manual_seed(seed)
    k = model.config["num_classes"]
    multilabel = labels.ndim == 2
    if multilabel and (labels.shape[1] != k or config.balanced == "group" or config.label_smoothing):
        raise ValueError(
            f"multi-label targets {tuple(labels.shape)} need a {k}-class model, no group balancing, no label smoothing"
        )
    draws = draw_indices(labels, k, config, torch.Generator().manual_seed(seed), groups)
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    mine = shard(config.batch_size, rank, world)
    # channels_last (NHWC): oneDNN's CPU convolutions run faster in it (about 1.3x on the retrain step).
    model.to(device, memory_format=torch.channels_last).train()
    if world > 1:
        global_batch(model)
    # The fused AdamW (one kernel for all parameters) saves most of the optimiser's per-tensor overhead.
    fused = torch.device(device).type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    net, step_opt, backward = model, opt, torch.Tensor.backward
    if accelerator is not None:  # DDP's gradient averaging, autocast and fp16 loss scaling
        net = accelerator.prepare_model(model, device_placement=False)
        step_opt = accelerator.prepare_optimizer(opt, device_placement=False)
        backward = accelerator.backward

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batch_gen = torch.Generator().manual_seed(seed + 17 + rank)
    window, in_window = torch.zeros((), device=device), 0
    local = mine.stop - mine.start
    starts = [step * config.batch_size + mine.start for step in range(config.steps)]
    # The batches are gathered (and, streamed, decoded in workers) ahead of the steps that train on them.
    loaded = batches(images, [draws[s : s + local] for s in starts], workers)
    for step, (start, x) in enumerate(zip(starts, loaded, strict=True)):
        idx = draws[start : start + local]
        x, y = x.to(device), labels[idx].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        if transform is not None:
            x = augment_batch(transform, x, draw_generators(seed, start, start + len(idx)))
        if batch_transform is not None:
            x, target = batch_transform(x, y, batch_gen)
        else:
            target = y.float() if multilabel else F.one_hot(y, k).float()
        if config.label_smoothing:
            target = target * (1 - config.label_smoothing) + config.label_smoothing / k
        x = x.contiguous(memory_format=torch.channels_last)
        logits = net(x).float()
        if multilabel:  # mean over classes and images, as torch's BCE-with-logits
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
        step_opt.zero_grad(set_to_none=True)
        backward(loss)
        step_opt.step()
        sched.step()
        if callback is not None:
            window += loss.detach()
            in_window += 1
            if in_window == log_every or step + 1 == config.steps:
                callback(step, float(window) / in_window)
                window.zero_()
                in_window = 0
    if accelerator is not None:
        model = accelerator.unwrap_model(net, keep_fp32_wrapper=False)
    return local_batch(model).eval()
