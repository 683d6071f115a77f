"""Training-time augmentation baselines: ``none``, ``weak``, ``strong``, ``cutmix``, ``mixup``.

Per-image transforms take (C, H, W) in [0, 1] and a ``torch.Generator``; batch transforms take
a batch and integer labels and return the batch and soft labels (N, K).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tailsynth.errors import TailsynthError

AUGMENT_METHODS = ("none", "weak", "strong", "cutmix", "mixup")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def random_affine(
    image: torch.Tensor,
    gen: torch.Generator,
    *,
    scale: tuple[float, float],
    translate: float,
    rotate: float,
    shear: float,
    hflip: bool,
) -> torch.Tensor:
    """One random affine warp (zoom, shift, rotation, shear, optional mirror) of (C, H, W)."""
    s = _uniform(gen, *scale)
    a = math.radians(_uniform(gen, -rotate, rotate))
    sh = math.radians(_uniform(gen, -shear, shear))
    tx, ty = _uniform(gen, -translate, translate) * 2, _uniform(gen, -translate, translate) * 2
    flip = -1.0 if hflip and torch.rand((), generator=gen).item() < 0.5 else 1.0
    cos, sin = math.cos(a), math.sin(a)
    theta = torch.tensor(
        [[flip * cos / s, (-sin + math.tan(sh) * cos) / s, tx], [flip * sin / s, (cos + math.tan(sh) * sin) / s, ty]],
        dtype=image.dtype,
    )
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def weak_transform(hflip: bool = False, scale: tuple[float, float] = (0.9, 1.1), translate: float = 0.1):
    """Random zoom and shift (the 'weak' augmentation of the papers: a random resized crop), optional mirror."""

    def apply(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_affine(image, gen, scale=scale, translate=translate, rotate=0.0, shear=0.0, hflip=hflip)

    return apply


def strong_transform(
    hflip: bool = False, rotate: float = 15.0, shear: float = 10.0, jitter: float = 0.3, erase: float = 0.25
):
    """Weak + rotation, shear, brightness/contrast jitter and random erasing of one rectangle."""

    def apply(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_affine(image, gen, scale=(0.85, 1.15), translate=0.12, rotate=rotate, shear=shear, hflip=hflip)
        b, c = _uniform(gen, -jitter, jitter) * 0.5, _uniform(gen, 1 - jitter, 1 + jitter)
        mean = x.mean()
        x = ((x - mean) * c + mean + b).clamp(0, 1)
        if torch.rand((), generator=gen).item() < erase:
            h, w = x.shape[-2:]
            eh, ew = int(h * _uniform(gen, 0.15, 0.4)), int(w * _uniform(gen, 0.15, 0.4))
            top = int(torch.randint(0, h - eh + 1, (), generator=gen))
            left = int(torch.randint(0, w - ew + 1, (), generator=gen))
            x = x.clone()
            x[:, top : top + eh, left : left + ew] = torch.rand((), generator=gen).item()
        return x

    return apply


def _beta(gen: torch.Generator, alpha: float) -> float:
    # Beta(a, a) from two Gammas drawn with our generator (torch's Beta has no generator argument).
    g1 = torch._standard_gamma(torch.tensor([alpha]), generator=gen).item()
    g2 = torch._standard_gamma(torch.tensor([alpha]), generator=gen).item()
    return g1 / (g1 + g2)


def mixup(num_classes: int, alpha: float = 0.2):
    """MixUp (Zhang et al. 2018): convex mixing of a batch with its shuffled self and their labels."""

    def apply(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        lam = _beta(gen, alpha)
        perm = torch.randperm(len(x), generator=gen)
        target = F.one_hot(y, num_classes).float()
        return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]

    return apply


def cutmix(num_classes: int, alpha: float = 1.0):
    """CutMix (Yun et al. 2019): paste a box from a shuffled batch; labels mixed by box area."""

    def apply(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        lam = _beta(gen, alpha)
        h, w = x.shape[-2:]
        bh, bw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (), generator=gen)), int(torch.randint(0, w, (), generator=gen))
        top, bottom = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        perm = torch.randperm(len(x), generator=gen)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
        target = F.one_hot(y, num_classes).float()
        return x, lam * target + (1 - lam) * target[perm]

    return apply


def training_augmentation(
    method: str, num_classes: int, params: dict | None = None
) -> tuple[Callable | None, Callable | None]:
    """(per-image transform, batch transform) for a training-time method.

    Every method but ``none`` includes the weak per-image transform, as in the papers'
    baselines; ``params`` holds the method's settings (e.g. ``{"alpha": 1.0, "hflip": False}``).
    """
    params = dict(params or {})
    hflip = bool(params.get("hflip", False))
    if method == "none":
        return None, None
    if method == "weak":
        return weak_transform(hflip), None
    if method == "strong":
        return strong_transform(hflip), None
    if method == "cutmix":
        return weak_transform(hflip), cutmix(num_classes, float(params.get("alpha", 1.0)))
    if method == "mixup":
        return weak_transform(hflip), mixup(num_classes, float(params.get("alpha", 0.2)))
    raise TailsynthError(f"unknown training-time method {method!r}; known: {', '.join(AUGMENT_METHODS)}")
