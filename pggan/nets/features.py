"""Feature-map counts per resolution, independent of max_res (so checkpoints keep growing)."""
from __future__ import annotations

import math


def log2_res(res: int) -> int:
    r = int(math.log2(res))
    if 2 ** r != res:
        raise ValueError(f"resolution {res} is not a power of two")
    return r


def nf_stage(stage: int, fmap_base: int, fmap_max: int, fmap_min: int = 1) -> int:
    """PGGAN: nf(stage) = min(fmap_base / 2^stage, fmap_max); stage = log2(res) - 1."""
    return max(min(int(fmap_base / (2.0 ** stage)), fmap_max), fmap_min)


def nf_res(res: int, fmap_base: int, fmap_max: int, fmap_min: int = 1) -> int:
    return nf_stage(log2_res(res) - 1, fmap_base, fmap_max, fmap_min)


def resolutions(max_res: int, start: int = 4) -> list:
    return [2 ** r for r in range(log2_res(start), log2_res(max_res) + 1)]
