"""Metric keys that dvc can show: no dots inside a key (dvc flattens nested keys with dots)."""

from __future__ import annotations


def level_key(r: float) -> str:
    """A metrics key for a noise level without a dot (dvc flattens nested keys with dots): 0.6 -> "r60"."""
    return f"r{round(r * 100)}"


def level_from_key(key: str) -> float:
    """Inverse of :func:`level_key`: "r60" -> 0.6."""
    return int(key[1:]) / 100
