"""Test accuracy of retrain-stage classifiers: the reference training (see train_step.py) against the current one.

    python benchmarks/train_accuracy.py [--seeds 3] [--steps 300]

On the embedded digits (long-tailed train split, balanced test split of 50 per class), trains
methods ``none`` and ``weak`` as the retrain stage does (SmallCNN width 16, lr 0.002, batch 64,
class-balanced sampling) for each seed with the frozen reference implementation and with the
current ``tailsynth`` code, and prints overall and few-class test accuracy (classes with fewer
than 15 train images) as mean +- std over seeds (sample std), the per-seed values, and the
difference of the means with its standard error.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from train_step import ref_build_classifier, ref_fit_classifier, ref_weak_transform

from tailsynth.data.digits import load_digits_split
from tailsynth.methods.augment import training_augmentation
from tailsynth.models.classifier import build_classifier, predict
from tailsynth.train.fit import FitConfig, fit_classifier

FEW = 15  # data.buckets.few


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, few: torch.Tensor) -> tuple[float, float]:
    """(overall, few-class) accuracy of ``model`` on float images (N, C, H, W) with labels (N,)."""
    correct = (predict(model, images)[0].argmax(1) == labels).float()
    return correct.mean().item(), correct[torch.isin(labels, few)].mean().item()


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    d = load_digits_split(size=32, imbalance_ratio=30, max_per_class=120, test_per_class=50, val_per_class=4, seed=0)
    train, test = torch.from_numpy(d["split"] == "train"), torch.from_numpy(d["split"] == "test")
    labels = torch.from_numpy(d["labels"])
    # uint8 train images, as the stages load the prepared PNGs; float test images in [0, 1].
    x, y = (d["images"][train] * 255).round().to(torch.uint8), labels[train]
    xt, yt = d["images"][test], labels[test]
    k = int(labels.max()) + 1
    few = (torch.bincount(y, minlength=k) < FEW).nonzero().flatten()
    print(f"{len(y)} train images, {len(yt)} test images; few classes (< {FEW} train images): {few.tolist()}")
    print(f"{args.steps} steps, batch 64, lr 0.002, width 16, balanced sampling, seeds 0..{args.seeds - 1}")
    print(f"{'method':<7} {'impl':<10} {'overall':<18} {'few':<18} per-seed overall / few")
    for method in ("none", "weak"):
        results = {}
        for impl in ("reference", "current"):
            overall, few_acc = [], []
            for seed in range(args.seeds):
                if impl == "reference":
                    model = ref_build_classifier(k, 1, width=16, seed=seed)
                    transform = ref_weak_transform() if method == "weak" else None
                    ref_fit_classifier(model, x, y, steps=args.steps, lr=0.002, seed=seed, transform=transform)
                else:
                    model = build_classifier("small_cnn", k, 1, 32, width=16, seed=seed)
                    transform, _ = training_augmentation(method, k)
                    config = FitConfig(steps=args.steps, batch_size=64, lr=0.002, balanced=True)
                    fit_classifier(model, x, y, config, seed=seed, transform=transform)
                a, f = accuracy(model, xt, yt, few)
                overall.append(a)
                few_acc.append(f)
            results[impl] = (overall, few_acc)
            seeds = " ".join(f"{a:.3f}/{f:.3f}" for a, f in zip(overall, few_acc, strict=True))
            print(f"{method:<7} {impl:<10} {summary(overall):<18} {summary(few_acc):<18} {seeds}", flush=True)
        for i, name in enumerate(("overall", "few")):
            old, new = results["reference"][i], results["current"][i]
            se = (statistics.variance(old) / len(old) + statistics.variance(new) / len(new)) ** 0.5
            diff = statistics.mean(new) - statistics.mean(old)
            print(f"{method:<7} current - reference, {name}: {diff:+.4f} (standard error {se:.4f})")


if __name__ == "__main__":
    main()
