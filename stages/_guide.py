"""Stage glue for the guiding classifier's view of a synthetic set (evaluate@<method>, feedback_sweep)."""

from pathlib import Path

import torch

from tailsynth.data.manifest import load_split
from tailsynth.models.classifier import load_classifier
from tailsynth.synth.guidance import class_gaussians, mean_criteria

GUIDE = "models/classifier"


def load_guide(folder: Path, channels: int, num_classes: int, device):
    """The baseline classifier (the feedback ladder's guide) and its class Gaussians, fitted on the real
    train features of ``folder`` (what hardness is measured against)."""
    classifier = load_classifier(GUIDE, device)
    real, real_y = load_split(folder, "train", channels)
    return classifier, class_gaussians(classifier, real.float() / 255, real_y, num_classes)


def guide_criteria(
    images: torch.Tensor, labels: torch.Tensor, folder: Path, channels: int, num_classes: int, device
) -> dict:
    """Mean loss, entropy and hardness of the synthetic ``images`` (labelled ``labels``) for the guide."""
    classifier, gaussians = load_guide(folder, channels, num_classes, device)
    return mean_criteria(classifier, images, labels, gaussians)
