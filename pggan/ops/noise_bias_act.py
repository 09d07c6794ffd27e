"""Noise injection + bias + activation: the epilogue of every StyleGAN synthesis conv.

y = clamp(act(x + noise * strength + b) * gain, -clamp, clamp)

`noise` is per-pixel and shared across channels ([N or 1, 1, H, W], StyleGAN sec. 3.2) and
`strength` a learned scalar, so a fused kernel reads x once and writes y once instead of the
three passes (add noise, add bias, activate) of the eager chain.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._dispatch import resolve_impl
from .bias_act import bias_act_ref


def _check_noise(x: torch.Tensor, noise: torch.Tensor) -> None:
    if (noise.ndim != 4 or noise.shape[1] != 1 or noise.shape[0] not in (1, x.shape[0])
            or noise.shape[2:] != x.shape[2:]):
        raise ValueError(f"noise_bias_act: noise of shape {tuple(noise.shape)} must be "
                         f"[N or 1, 1, H, W] for x of shape {tuple(x.shape)}")


def noise_bias_act_ref(x: torch.Tensor, noise: Optional[torch.Tensor] = None,
                       strength: Optional[torch.Tensor] = None,
                       b: Optional[torch.Tensor] = None, act: str = "lrelu",
                       alpha: Optional[float] = None, gain: Optional[float] = None,
                       clamp: Optional[float] = None) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"noise_bias_act: x must be [N, C, H, W] (got {tuple(x.shape)})")
    if noise is not None:
        _check_noise(x, noise)
        s = strength.to(x.dtype) if strength is not None else 1.0
        x = x + noise.to(x.dtype) * s                              # broadcast over C
    return bias_act_ref(x, b, dim=1, act=act, alpha=alpha, gain=gain, clamp=clamp)


def noise_bias_act(x: torch.Tensor, noise: Optional[torch.Tensor] = None,
                   strength: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None,
                   act: str = "lrelu", alpha: Optional[float] = None,
                   gain: Optional[float] = None, clamp: Optional[float] = None,
                   impl: str = "auto") -> torch.Tensor:
    """x [N, C, H, W] + noise [N|1, 1, H, W] * strength (scalar) + b [C] -> act -> * gain.

    noise=None skips the injection (noise_mode='none'); strength=None means strength 1.
    """
    if resolve_impl("noise_bias_act", impl, x, noise, strength, b, has_triton=False) == "ref":
        return noise_bias_act_ref(x, noise, strength, b, act, alpha, gain, clamp)
    raise AssertionError("unreachable")
