"""Training-time augmentation baselines: ``none``, ``weak``, ``strong``, ``cutmix``, ``mixup``.

Per-image transforms take (C, H, W) in [0, 1] and a ``torch.Generator``; batch transforms take
a batch and integer labels and return the batch and soft labels (N, K).

The per-image transforms (:func:`weak_transform`, :func:`strong_transform`) are
:class:`Augmentation` objects: ``aug(image, gen)`` augments one image and
``aug.batch(images, gens)`` augments a batch with one generator per image, in one warp for the
whole batch. Each image's random parameters come from its own generator only, so an image's
result does not depend on what else is in the batch, and the per-image call is the batch path
with a batch of one: both give the same image for the same generator. Bit for bit, except that
the strong transform's contrast jitter takes a float32 mean per image, which torch may sum in
another order for a batch of one on large images (a difference of 1 ulp, 1.2e-7, at 224x224;
none up to 64x64).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from tailsynth.errors import TailsynthError

AUGMENT_METHODS = ("none", "weak", "strong", "cutmix", "mixup")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return _lerp(low, high, torch.rand((), generator=gen).item())


def _lerp(low: float, high: float, u: float) -> float:
    return low + (high - low) * u


class Augmentation:
    """A random per-image augmentation with a batched path.

    ``draw(gen, (H, W))`` draws one image's parameters from its generator (on the CPU);
    ``apply(images, params)`` applies a list of them to (N, C, H, W) on the images' device.
    """

    def __init__(self, draw: Callable, apply: Callable):
        self.draw, self.apply = draw, apply

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One image (C, H, W) in [0, 1] -> (C, H, W)."""
        return self.batch(image[None], [gen])[0]

    def batch(self, images: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] and N generators -> (N, C, H, W); image i uses ``gens[i]`` only."""
        if len(gens) != len(images):
            raise ValueError(f"need one generator per image, got {len(gens)} for {len(images)} images")
        size = tuple(images.shape[-2:])
        return self.apply(images, [self.draw(gen, size) for gen in gens])


def augment_batch(
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    images: torch.Tensor,
    gens: Sequence[torch.Generator],
) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W) with ``transform`` and one generator per image.

    Uses the batched path of an :class:`Augmentation`, and calls any other per-image transform image by image.
    """
    if isinstance(transform, Augmentation):
        return transform.batch(images, gens)
    return torch.stack([transform(x, gen) for x, gen in zip(images, gens, strict=True)])


def _affine_theta(
    u: list[float],
    *,
    scale: tuple[float, float],
    translate: float,
    rotate: float,
    shear: float,
    hflip: bool,
) -> list[float]:
    """The 2x3 sampling matrix (row-major) of a zoom, shift, rotation, shear and optional mirror, from uniforms ``u``.

    ``u`` holds 5 uniforms in [0, 1), a 6th when ``hflip``: the order in which they are drawn.
    """
    s = _lerp(*scale, u[0])
    a = math.radians(_lerp(-rotate, rotate, u[1]))
    sh = math.radians(_lerp(-shear, shear, u[2]))
    tx, ty = _lerp(-translate, translate, u[3]) * 2, _lerp(-translate, translate, u[4]) * 2
    flip = -1.0 if hflip and u[5] < 0.5 else 1.0
    cos, sin = math.cos(a), math.sin(a)
    return [flip * cos / s, (-sin + math.tan(sh) * cos) / s, tx, flip * sin / s, (cos + math.tan(sh) * sin) / s, ty]


def _warp(images: torch.Tensor, thetas: list[list[float]]) -> torch.Tensor:
    """(N, C, H, W) warped by N sampling matrices (6 floats each), bilinear with zero padding."""
    theta = torch.tensor(thetas, dtype=images.dtype).view(-1, 2, 3).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
    return _affine(scale=scale, translate=translate, rotate=rotate, shear=shear, hflip=hflip)(image, gen)


def _affine(*, scale, translate, rotate, shear, hflip) -> Augmentation:
    def draw(gen: torch.Generator, size: tuple[int, int]) -> list[float]:
        # One call for all uniforms: the CPU generator fills a vector in order, as scalar draws would.
        u = torch.rand(6 if hflip else 5, generator=gen).tolist()
        return _affine_theta(u, scale=scale, translate=translate, rotate=rotate, shear=shear, hflip=hflip)

    return Augmentation(draw, _warp)


def weak_transform(
    hflip: bool = False, scale: tuple[float, float] = (0.9, 1.1), translate: float = 0.1
) -> Augmentation:
    """Random zoom and shift (the 'weak' augmentation of the papers: a random resized crop), optional mirror."""
    return _affine(scale=scale, translate=translate, rotate=0.0, shear=0.0, hflip=hflip)


def strong_transform(
    hflip: bool = False, rotate: float = 15.0, shear: float = 10.0, jitter: float = 0.3, erase: float = 0.25
) -> Augmentation:
    """Weak + rotation, shear, brightness/contrast jitter and random erasing of one rectangle."""
    n_affine = 6 if hflip else 5

    def draw(gen: torch.Generator, size: tuple[int, int]) -> tuple:
        u = torch.rand(n_affine + 3, generator=gen).tolist()
        theta = _affine_theta(u, scale=(0.85, 1.15), translate=0.12, rotate=rotate, shear=shear, hflip=hflip)
        b, c = _lerp(-jitter, jitter, u[n_affine]) * 0.5, _lerp(1 - jitter, 1 + jitter, u[n_affine + 1])
        box = (0, 0, 0, 0, 0.0)  # top, left, height, width, fill value; empty: no erasing
        if u[n_affine + 2] < erase:
            h, w = size
            eh, ew = int(h * _uniform(gen, 0.15, 0.4)), int(w * _uniform(gen, 0.15, 0.4))
            top = int(torch.randint(0, h - eh + 1, (), generator=gen))
            left = int(torch.randint(0, w - ew + 1, (), generator=gen))
            box = (top, left, eh, ew, torch.rand((), generator=gen).item())
        return theta, b, c, box

    def apply(images: torch.Tensor, params: list[tuple]) -> torch.Tensor:
        x = _warp(images, [p[0] for p in params])
        dev, dtype = x.device, x.dtype
        b, c = (torch.tensor([p[i] for p in params], dtype=dtype).view(-1, 1, 1, 1).to(dev) for i in (1, 2))
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(0, 1)
        if any(p[3][2] for p in params):
            boxes = torch.tensor([p[3][:4] for p in params]).view(-1, 4, 1, 1).to(dev)
            top, left, eh, ew = boxes.unbind(1)
            rows = torch.arange(x.shape[-2], device=dev).view(1, -1, 1)
            cols = torch.arange(x.shape[-1], device=dev).view(1, 1, -1)
            inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
            fill = torch.tensor([p[3][4] for p in params], dtype=dtype).view(-1, 1, 1, 1).to(dev)
            x = torch.where(inside[:, None], fill, x)
        return x

    return Augmentation(draw, apply)


def _beta(gen: torch.Generator, alpha: float) -> float:
    # Beta(a, a) from two Gammas drawn with our generator (torch's Beta has no generator argument).
    g1 = torch._standard_gamma(torch.tensor([alpha]), generator=gen).item()
    g2 = torch._standard_gamma(torch.tensor([alpha]), generator=gen).item()
    return g1 / (g1 + g2)


def _targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    # class indices (N,) -> one-hot rows; multi-hot rows (N, K) of multi-label data as they are
    return F.one_hot(y, num_classes).float() if y.ndim == 1 else y.float()


def mixup(num_classes: int, alpha: float = 0.2):
    """MixUp (Zhang et al. 2018): convex mixing of a batch with its shuffled self and their labels.

    ``x`` (N, C, H, W) and ``y`` (N,) class indices or (N, K) multi-hot rows, on any device (the
    generator is a CPU one); returns the mixed batch and soft labels (N, K) on their device.
    """

    def apply(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        lam = _beta(gen, alpha)
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        target = _targets(y, num_classes)
        return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]

    return apply


def cutmix(num_classes: int, alpha: float = 1.0):
    """CutMix (Yun et al. 2019): paste a box from a shuffled batch; labels mixed by box area.

    ``x`` (N, C, H, W) and ``y`` (N,) class indices or (N, K) multi-hot rows, on any device; returns
    the batch and soft labels (N, K) there.
    """

    def apply(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        lam = _beta(gen, alpha)
        h, w = x.shape[-2:]
        bh, bw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (), generator=gen)), int(torch.randint(0, w, (), generator=gen))
        top, bottom = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
        target = _targets(y, num_classes)
        return x, lam * target + (1 - lam) * target[perm]

    return apply


def training_augmentation(
    method: str, num_classes: int, params: dict | None = None
) -> tuple[Augmentation | None, Callable | None]:
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
