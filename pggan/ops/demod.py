"""Weight-demodulation coefficients (StyleGAN2, Karras et al. 2020, eq. 3).

A modulated conv scales input channel i of sample n by its style s[n, i]; demodulation rescales
output channel o so that its expected variance is 1 again:

  d[n, o] = 1 / sqrt( sum_{i, ky, kx} (w[o, i, ky, kx] * s[n, i])^2 + eps )
          = rsqrt( sum_i (sum_{ky, kx} w[o, i, ky, kx]^2) * s[n, i]^2 + eps )

The second form is a [N, I] x [I, O] matmul and never builds the per-sample [N, O, I, k, k]
weight tensor.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl


def demod_coefficients_ref(weight: torch.Tensor, styles: torch.Tensor,
                           eps: float = 1e-8) -> torch.Tensor:
    if weight.ndim != 4 or styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
        raise ValueError(f"demod_coefficients: weight [O, I, kh, kw] and styles [N, I] expected "
                         f"(got {tuple(weight.shape)} and {tuple(styles.shape)})")
    # float32 even under bf16 autocast: a sum of I*k*k squares loses too much in 8 mantissa bits.
    with torch.autocast(device_type=styles.device.type, enabled=False):
        w2 = weight.float().square().sum(dim=(2, 3))               # [O, I]
        s2 = styles.float().square()                               # [N, I]
        return torch.rsqrt(s2 @ w2.t() + eps)                      # [N, O], float32


def demod_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8,
                       impl: str = "auto") -> torch.Tensor:
    """weight [O, I, kh, kw] (already scaled), styles [N, I] -> float32 [N, O]."""
    if resolve_impl("demod_coefficients", impl, weight, styles, has_triton=False) == "ref":
        return demod_coefficients_ref(weight, styles, eps)
    raise AssertionError("unreachable")
