"""Augmentation families: training-time baselines, generated baselines, GeNIe, feedback, fusion."""
