"""Training classifiers on real and real + synthetic data."""
