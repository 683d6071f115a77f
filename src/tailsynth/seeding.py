"""Per-item seeds: a row's randomness depends on its identity, not on batch or process."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(base_seed: int, *keys: object) -> int:
    """A 31-bit seed from ``base_seed`` and any number of keys (strings, ints), stable across runs."""
    text = "\x1f".join([str(int(base_seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
