"""Stage glue for the guiding classifier's view of a synthetic set (evaluate@<method>, feedback_sweep)."""

from pathlib import Path

import torch

from tailsynth.data.manifest import read_manifest, select_rows
from tailsynth.data.stream import open_images
from tailsynth.models.classifier import load_classifier
from tailsynth.synth.guidance import class_gaussians, mean_criteria

GUIDE = "models/classifier"


def load_guide(folder: Path, channels: int, num_classes: int, device, in_memory_bytes: int, workers: int = 0):
    """The baseline classifier (the feedback ladder's guide) and its class Gaussians, fitted on the real
    train features of ``folder`` (what hardness is measured against); the images are read as
    ``runtime.loader`` says (``in_memory_bytes``, ``workers``)."""
    classifier = load_classifier(GUIDE, device)
    rows = select_rows(read_manifest(folder), "train")
    real = open_images(folder, rows, channels, in_memory_bytes)
    real_y = torch.tensor(rows["label"].tolist(), dtype=torch.int64)
    return classifier, class_gaussians(classifier, real, real_y, num_classes, workers)


def guide_criteria(
    images, labels: torch.Tensor, folder: Path, channels: int, num_classes: int, device, in_memory_bytes: int, workers=0
) -> dict:
    """Mean loss, entropy and hardness of the synthetic ``images`` (an image set of
    :mod:`tailsynth.data.stream`, labelled ``labels``) for the guide."""
    classifier, gaussians = load_guide(folder, channels, num_classes, device, in_memory_bytes, workers)
    return mean_criteria(classifier, images, labels, gaussians, workers)
