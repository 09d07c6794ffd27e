"""Seeds derived from parts (the run's seed, a purpose, an epoch, a position, ...).

The data stream's choices (the permutation of each epoch, the shard order and block
permutations of remote shards; order.py) and the training step's random numbers are seeded
here, so they are pure functions of the run's seed and the image counter, never of the
process-global RNG state that happened to be there.
"""
from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across processes and Pythons)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)
