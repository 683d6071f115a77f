"""Metrics: accuracy by shot bucket, label consistency, Fréchet distances."""
