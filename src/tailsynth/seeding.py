"""Per-item seeds: a row's randomness depends on its identity, not on batch or process."""

from __future__ import annotations

import hashlib


def derive_seed(base_seed: int, *keys: object) -> int:
    """A 31-bit seed from ``base_seed`` and any number of keys (strings, ints), stable across runs."""
    text = "\x1f".join([str(int(base_seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF
