"""tailsynth: generative augmentation for long-tailed and few-shot image classification."""

__version__ = "0.1.0"
