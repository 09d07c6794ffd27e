"""Bias + activation + gain (+ optional clamp), the epilogue of every conv and dense layer.

y = clamp(act(x + b) * gain, -clamp, clamp)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._dispatch import resolve_impl

# act -> (default alpha, default gain). lrelu's gain sqrt(2) keeps unit variance (He et al.).
ACTIVATIONS = {
    "linear": (0.0, 1.0),
    "relu": (0.0, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
}


def _resolve(act: str, alpha: Optional[float], gain: Optional[float]):
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown act {act!r} (choose from {sorted(ACTIVATIONS)})")
    d_alpha, d_gain = ACTIVATIONS[act]
    return (d_alpha if alpha is None else float(alpha)), (d_gain if gain is None else float(gain))


def bias_act_ref(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1,
                 act: str = "linear", alpha: Optional[float] = None,
                 gain: Optional[float] = None, clamp: Optional[float] = None) -> torch.Tensor:
    alpha, gain = _resolve(act, alpha, gain)
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not match "
                             f"x.shape[{dim}] = {x.shape[dim]}")
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act == "relu":
        x = F.relu(x)
    if gain != 1.0:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1,
             act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """Add `b` along `dim`, apply `act`, scale by `gain`, clamp to [-clamp, clamp]."""
    if resolve_impl("bias_act", impl, x, b, has_triton=False) == "ref":
        return bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    raise AssertionError("unreachable")
