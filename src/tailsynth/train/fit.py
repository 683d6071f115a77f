"""Fit a classifier for a fixed number of optimiser steps, with optional class-balanced sampling.

A fixed step count (not epochs) keeps methods comparable when they add different amounts of data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from tailsynth.models.classifier import Classifier

ImageTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FitConfig:
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    balanced: bool = True
    label_smoothing: float = 0.0
    num_workers: int = 0


class _Draws(Dataset):
    """Item n is the n-th draw of the sampler, augmented with a generator seeded by (seed, n).

    Keying the randomness by draw number keeps runs identical whatever the number of workers.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, draws: torch.Tensor, transform, seed: int):
        self.images, self.labels, self.draws, self.transform, self.seed = images, labels, draws, transform, seed

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, n: int):
        i = int(self.draws[n])
        x = self.images[i]
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if self.transform is not None:
            x = self.transform(x, torch.Generator().manual_seed(self.seed * 1_000_003 + n))
        return x, self.labels[i]


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights 1/count(label): every class is drawn equally often."""
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).float()
    return 1.0 / counts[labels]


def fit_classifier(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: FitConfig,
    *,
    seed: int = 0,
    transform: ImageTransform | None = None,
    batch_transform: BatchTransform | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, float], None] | None = None,
) -> Classifier:
    """Train ``model`` in place on ``images`` (N, C, H, W; uint8 or float in [0, 1]) and ``labels`` (N,).

    ``transform`` augments one image; ``batch_transform`` (CutMix, MixUp) maps a batch and its
    integer labels to a batch and soft labels (N, K). Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    k = model.config["num_classes"]
    gen = torch.Generator().manual_seed(seed)
    n_draws = config.steps * config.batch_size
    if config.balanced:
        sampler = WeightedRandomSampler(class_balanced_weights(labels, k), n_draws, replacement=True, generator=gen)
    else:
        sampler = torch.utils.data.RandomSampler(labels, replacement=True, num_samples=n_draws, generator=gen)
    draws = torch.tensor(list(sampler), dtype=torch.int64)
    loader = DataLoader(
        _Draws(images, labels, draws, transform, seed),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
    )
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batch_gen = torch.Generator().manual_seed(seed + 17)
    for step, (x, y) in enumerate(loader):
        if step >= config.steps:
            break
        if batch_transform is not None:
            x, target = batch_transform(x, y, batch_gen)
        else:
            target = F.one_hot(y, k).float()
        if config.label_smoothing:
            target = target * (1 - config.label_smoothing) + config.label_smoothing / k
        x, target = x.to(device), target.to(device)
        loss = torch.sum(-target * F.log_softmax(model(x), dim=1), dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if callback is not None:
            callback(step, loss.item())
    return model.eval()
