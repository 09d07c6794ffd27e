"""Alpha fade-in (PGGAN sec. 3): out = lerp(old, new, alpha) = old + alpha * (new - old).

At alpha = 0 the result is exactly `old` (the smaller network's output), at alpha = 1 exactly
`new`. `fade_reals` blends real images the same way the generator's output is blended.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl
from .resample import downsample2d, upsample2d


def fade_in_ref(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    if old.shape != new.shape:
        raise ValueError(f"fade_in: shapes differ {tuple(old.shape)} vs {tuple(new.shape)}")
    return torch.lerp(old, new.to(old.dtype), float(alpha))


def fade_in(old: torch.Tensor, new: torch.Tensor, alpha: float, impl: str = "auto"):
    if resolve_impl("fade_in", impl, old, new, has_triton=False) == "ref":
        return fade_in_ref(old, new, alpha)
    raise AssertionError("unreachable")


def fade_reals(x: torch.Tensor, alpha: float, impl: str = "auto") -> torch.Tensor:
    """Real images during a fade-in: lerp(nearest_up(box_down(x)), x, alpha).  # [N, C, H, W]"""
    if alpha >= 1.0:
        return x
    low = upsample2d(downsample2d(x, mode="box"), mode="nearest")
    return fade_in(low, x, alpha, impl=impl)
