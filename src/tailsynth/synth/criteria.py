"""Feedback criteria: the per-image scores that feedback-guided sampling increases.

Each criterion maps a classifier's logits (B, K) and penultimate features (B, D) for images
generated for classes ``targets`` (B,) to one score per image (B,), differentiable in both:

- ``loss``: cross-entropy of the intended class (high when the classifier gets the image wrong);
- ``entropy``: entropy of the predicted distribution (high when it is unsure);
- ``hardness``: the Mahalanobis distance of the features to the intended class's Gaussian, fitted on
  the real training images' features (high in low-density regions of that class; Sehwag et al. 2022).

Class Gaussians are estimated with Ledoit-Wolf shrinkage (see :func:`ledoit_wolf`): a 4-image class
in a 64-dimensional feature space has a singular sample covariance, and shrinkage towards a scaled
identity makes it invertible with a data-driven weight instead of a hand-set ridge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tailsynth.errors import TailsynthError

CRITERIA = ("loss", "entropy", "hardness")


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of ``x`` (n, D): ``(1 - s) S + s (tr S / D) I`` and ``s`` in [0, 1].

    ``S`` is the maximum-likelihood covariance (divides by n) of the centred samples; ``s`` is the
    closed-form shrinkage of Ledoit & Wolf (2004) that minimises the expected Frobenius error, the
    estimator scikit-learn's ``ledoit_wolf`` computes. Computed in float64.
    """
    x = x.double()
    n, d = x.shape
    xc = x - x.mean(0, keepdim=True)
    cov = xc.T @ xc / n
    mu = torch.trace(cov) / d
    if n < 2 or mu <= 0:
        return cov, 1.0
    x2 = xc**2
    beta_ = (x2.T @ x2).sum()
    delta_ = ((xc.T @ xc) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * x2.sum() / n + d * mu**2) / d
    shrink = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return (1 - shrink) * cov + shrink * mu * eye, shrink


@dataclass
class ClassGaussians:
    """One Gaussian per class in a feature space: ``means`` (K, D), ``precisions`` (K, D, D) (inverse
    covariances), ``shrinkage`` (K,) and ``counts`` (K,) of the images each was fitted on."""

    means: torch.Tensor
    precisions: torch.Tensor
    shrinkage: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassGaussians:
        """Fit on ``features`` (N, D) with integer ``labels`` (N,).

        Class y's covariance is :func:`ledoit_wolf` of its own features. A class where that is still
        singular (one image: no spread of its own; two: the Ledoit-Wolf weight is 0 for n = 2) takes
        the pooled within-class covariance, shrunk the same way. A
        relative ridge of 1e-6 of the mean variance keeps every precision finite. A class with no
        image at all is an error: there is nothing to measure hardness against.
        """
        features, labels = features.double(), labels.long()
        counts = torch.bincount(labels, minlength=num_classes)
        missing = [k for k in range(num_classes) if counts[k] == 0]
        if missing:
            raise TailsynthError(f"hardness needs real train images of every class; none of class {missing}")
        d = features.shape[1]
        means = torch.stack([features[labels == k].mean(0) for k in range(num_classes)])
        pooled, pooled_shrink = ledoit_wolf(features - means[labels])
        ridge = 1e-6 * max(float(torch.trace(pooled)) / d, 1e-12)
        eye = torch.eye(d, dtype=features.dtype)
        precisions, shrinkage = [], []
        for k in range(num_classes):
            cov, s = ledoit_wolf(features[labels == k])
            if s == 0 and counts[k] - 1 < d:  # still singular: too few images and no shrinkage weight
                cov, s = pooled, pooled_shrink
            precisions.append(torch.linalg.inv(cov + ridge * eye))
            shrinkage.append(s)
        return cls(means, torch.stack(precisions), torch.tensor(shrinkage, dtype=torch.float64), counts)

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> ClassGaussians:
        return ClassGaussians(
            self.means.to(device, dtype), self.precisions.to(device, dtype), self.shrinkage, self.counts
        )

    def mahalanobis(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance (B,) of ``features`` (B, D) to the Gaussians of ``targets`` (B,)."""
        diff = features - self.means[targets]
        return torch.einsum("bi,bij,bj->b", diff, self.precisions[targets], diff)


def criterion_values(
    name: str,
    logits: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    gaussians: ClassGaussians | None = None,
) -> torch.Tensor:
    """The criterion ``name`` per image (B,), from ``logits`` (B, K), ``features`` (B, D), ``targets`` (B,)."""
    if name == "loss":
        return F.cross_entropy(logits, targets, reduction="none")
    if name == "entropy":
        return -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1)
    if name == "hardness":
        if gaussians is None:
            raise TailsynthError("the hardness criterion needs class Gaussians fitted on real train features")
        return gaussians.mahalanobis(features, targets)
    raise TailsynthError(f"unknown feedback criterion {name!r}; choose one of {', '.join(CRITERIA)}")
