"""Training step of a retrain-stage classifier: today's implementation against the reference it replaced.

    python benchmarks/train_step.py [--steps 40] [--rounds 8] [--threads N]

Prints ms per training step (median and minimum over all steps) of the REFERENCE (a frozen copy,
below, of the implementation before the batched training loop: SmallCNN with two full-resolution
blocks, per-image augmentation in a ``DataLoader`` over the draws) and of the current
``tailsynth`` code, timed in whole ``fit_classifier`` runs alternating round by round, and their
ratios, for

- the retrain configuration (target >= 3x): SmallCNN width 16, batch 64, 32x32 grayscale,
  class-balanced sampling, ``weak`` augmentation;
- the oracle / few-shot backbone configuration (width 32), for information.

Data: the embedded digits' long-tailed train split as uint8, as the stages load it. Both runs get
a callback (as the stages' progress bar; it reads the loss every step) that times the steps. It
also checks that the current per-image and batched ``weak`` augmentation reproduce the
reference's images. Other processes on the machine slow both sides, and the one with more,
shorter operations (the current code) more: compare the ratios of a quiet run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

# ---------------------------------------------------------------------------------------------
# REFERENCE: frozen copy of the implementation before the batched training loop (git a1e93d0:
# models/classifier.py SmallCNN + Classifier, methods/augment.py weak transform, train/fit.py).
# Do not edit: it is what the current code is measured and checked against.
# ---------------------------------------------------------------------------------------------


class RefSmallCNN(nn.Module):
    """REFERENCE. Three conv stages and global pooling; ``width`` channels in the first stage."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        w = width
        self.features = nn.Sequential(
            block(in_channels, w),
            block(w, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


class RefClassifier(nn.Module):
    """REFERENCE. Normalisation (mean = std = 0.5) + RefSmallCNN; (N, C, H, W) in [0, 1] -> (N, K) logits."""

    def __init__(self, num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.config = {"arch": "small_cnn", "num_classes": num_classes, "in_channels": in_channels, "width": width}
        self.net = RefSmallCNN(in_channels, num_classes, width=width)
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), 0.5), persistent=False)
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), 0.5), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def ref_build_classifier(num_classes: int, in_channels: int, *, width: int, seed: int) -> RefClassifier:
    """REFERENCE. A fresh classifier initialised from ``seed`` (as build_classifier did)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RefClassifier(num_classes, in_channels, width)


def _ref_uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def ref_random_affine(image, gen, *, scale, translate, rotate, shear, hflip) -> torch.Tensor:
    """REFERENCE. One random affine warp (zoom, shift, rotation, shear, optional mirror) of (C, H, W)."""
    s = _ref_uniform(gen, *scale)
    a = math.radians(_ref_uniform(gen, -rotate, rotate))
    sh = math.radians(_ref_uniform(gen, -shear, shear))
    tx, ty = _ref_uniform(gen, -translate, translate) * 2, _ref_uniform(gen, -translate, translate) * 2
    flip = -1.0 if hflip and torch.rand((), generator=gen).item() < 0.5 else 1.0
    cos, sin = math.cos(a), math.sin(a)
    theta = torch.tensor(
        [[flip * cos / s, (-sin + math.tan(sh) * cos) / s, tx], [flip * sin / s, (cos + math.tan(sh) * sin) / s, ty]],
        dtype=image.dtype,
    )
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def ref_weak_transform(hflip: bool = False, scale=(0.9, 1.1), translate: float = 0.1):
    """REFERENCE. Random zoom and shift, optional mirror, of one (C, H, W) image."""

    def apply(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return ref_random_affine(image, gen, scale=scale, translate=translate, rotate=0.0, shear=0.0, hflip=hflip)

    return apply


class _RefDraws(Dataset):
    """REFERENCE. Item n is the n-th draw of the sampler, augmented with a generator seeded by (seed, n)."""

    def __init__(self, images, labels, draws, transform, seed: int):
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


def ref_fit_classifier(
    model,
    images,
    labels,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    warmup_steps: int = 50,
    seed: int = 0,
    transform=None,
    batch_transform=None,
    callback=None,
):
    """REFERENCE. fit_classifier with class-balanced sampling, no label smoothing, 0 workers, on the CPU."""
    torch.manual_seed(seed)
    k = model.config["num_classes"]
    gen = torch.Generator().manual_seed(seed)
    n_draws = steps * batch_size
    counts = torch.bincount(labels, minlength=k).clamp_min(1).float()
    sampler = WeightedRandomSampler(1.0 / counts[labels], n_draws, replacement=True, generator=gen)
    draws = torch.tensor(list(sampler), dtype=torch.int64)
    loader = DataLoader(_RefDraws(images, labels, draws, transform, seed), batch_size=batch_size, shuffle=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batch_gen = torch.Generator().manual_seed(seed + 17)
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
        if batch_transform is not None:
            x, target = batch_transform(x, y, batch_gen)
        else:
            target = F.one_hot(y, k).float()
        loss = torch.sum(-target * F.log_softmax(model(x), dim=1), dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if callback is not None:
            callback(step, loss.item())
    return model.eval()


# ---------------------------------------------------------------------------------------------
# End of the reference.
# ---------------------------------------------------------------------------------------------


def digits_train_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded default's long-tailed train split: uint8 (N, 1, 32, 32) and labels (N,)."""
    from tailsynth.data.digits import load_digits_split

    d = load_digits_split(size=32, imbalance_ratio=30, max_per_class=120, test_per_class=50, val_per_class=4, seed=0)
    train = torch.from_numpy(d["split"] == "train")
    images = (d["images"][train] * 255).round().to(torch.uint8)
    return images, torch.from_numpy(d["labels"])[train]


def check_augmentation(images: torch.Tensor, n: int = 64) -> bool:
    """Whether the current weak transform, per image and batched, gives the reference's images."""
    from tailsynth.methods.augment import weak_transform

    x = images[:n].float() / 255
    ref = torch.stack([ref_weak_transform()(x[i], torch.Generator().manual_seed(i)) for i in range(n)])
    new = weak_transform()
    one = torch.stack([new(x[i], torch.Generator().manual_seed(i)) for i in range(n)])
    batched = new.batch(x, [torch.Generator().manual_seed(i) for i in range(n)])
    return torch.equal(ref, one) and torch.equal(ref, batched)


def time_config(images, labels, *, width: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """ms of every step of the reference and of the current code, short fits alternating round by round.

    Each step is timed from one callback to the next: everything the loop does for a step.
    """
    from tailsynth.methods.augment import weak_transform
    from tailsynth.models.classifier import build_classifier
    from tailsynth.train.fit import FitConfig, fit_classifier

    k = int(labels.max()) + 1

    def ref(callback) -> None:
        model = ref_build_classifier(k, 1, width=width, seed=0)
        ref_fit_classifier(
            model, images, labels, steps=steps, seed=0, transform=ref_weak_transform(), callback=callback
        )

    def new(callback) -> None:
        model = build_classifier("small_cnn", k, 1, 32, width=width, seed=0)
        config = FitConfig(steps=steps, batch_size=64, lr=2e-3, balanced=True)
        fit_classifier(model, images, labels, config, seed=0, transform=weak_transform(), callback=callback)

    times: dict[str, list[float]] = {"reference": [], "current": []}
    for fn in (ref, new):  # warm-up (allocator, oneDNN primitive caches)
        fn(lambda s, v: None)
    for r in range(rounds):
        for name, fn in (
            (("reference", ref), ("current", new)) if r % 2 == 0 else (("current", new), ("reference", ref))
        ):
            stamps: list[float] = []
            fn(lambda s, v, stamps=stamps: stamps.append(time.perf_counter()))
            times[name] += [(b - a) * 1000 for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="steps per timed fit")
    ap.add_argument("--rounds", type=int, default=8, help="timed fits of each implementation")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = digits_train_uint8()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(labels)} train images")
    print(f"weak augmentation identical to the reference (per image and batched): {check_augmentation(images)}")
    print("ms/step as median (minimum) over all steps: the minimum is the least disturbed by other processes")
    for label, width in (("retrain (width 16)", 16), ("oracle / few-shot backbone (width 32)", 32)):
        load = os.getloadavg()[0]
        times = time_config(images, labels, width=width, steps=args.steps, rounds=args.rounds)
        (ref_med, ref_min), (new_med, new_min) = ((statistics.median(t), min(t)) for t in times.values())
        print(
            f"{label}: reference {ref_med:.1f} ({ref_min:.1f}), current {new_med:.1f} ({new_min:.1f}); "
            f"ratio {ref_med / new_med:.2f}x ({ref_min / new_min:.2f}x); load average {load:.1f} -> "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()
