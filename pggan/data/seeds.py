"""Seeds for the data stream, derived from (seed, rank, worker, start_nimg).

Every random choice of the loader (which shard to read next, the shuffle buffer, the mirror
flips) comes from a `random.Random` seeded here, so a run started at `start_nimg` with the same
seed reads the same stream again: a resumed run continues a reproducible stream instead of the
process-global RNG state that happened to be there.
"""
from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across processes and Pythons)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)
