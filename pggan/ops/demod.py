"""Weight-demodulation coefficients (StyleGAN2, Karras et al. 2020, eq. 3).

A modulated conv scales input channel i of sample n by its style s[n, i]; demodulation rescales
output channel o so that its expected variance is 1 again:

  d[n, o] = 1 / sqrt( sum_{i, ky, kx} (w[o, i, ky, kx] * s[n, i])^2 + eps )
          = rsqrt( sum_i (sum_{ky, kx} w[o, i, ky, kx]^2) * s[n, i]^2 + eps )

The second form is a [N, I] x [I, O] matmul and never builds the per-sample [N, O, I, k, k]
weight tensor.

Triton path: one forward kernel does the whole second form (square and sum the weight over the
kernel taps, square the styles, reduce over I, add eps, rsqrt) in fp32 with no tensor cores
(TF32 would round the sum's inputs to 10 bits), instead of four eager kernels and a matmul.
The backward is a pair of small matmuls, left to torch in fp32: with q = s^2 w2^T,
dq = -d^3 / 2 * grad, ds = 2 s (dq w2), dw = 2 w (dq^T s^2); written in torch ops it is
differentiable again, so double backward exists.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl
from ._triton_utils import (check_dtypes, device_guard, jit, next_pow2, tl, triton,
                            triton_supports)


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


# ---------------------------------------------------------------------------------------------
# Kernel


@jit
def _demod_fwd_kernel(w_ptr, s_ptr, d_ptr, N, O, I, KK, eps, ACC: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    # d[n, o] = rsqrt(sum_i s[n, i]^2 * sum_k w[o, i, k]^2 + eps); weight [O, I, KK] and styles
    # [N, I] contiguous. A program owns a [BLOCK_N, BLOCK_O] tile and walks I.
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)                # [BN]
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)                # [BO]
    q = tl.zeros([BLOCK_N, BLOCK_O], ACC)
    for i0 in range(0, I, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)                                    # [BI]
        w_mask = (o[:, None] < O) & (i[None, :] < I)
        w2 = tl.zeros([BLOCK_O, BLOCK_I], ACC)
        for k in range(0, KK):
            w = tl.load(w_ptr + (o[:, None] * I + i[None, :]) * KK + k, mask=w_mask,
                        other=0.0).to(ACC)
            w2 += w * w
        st = tl.load(s_ptr + n[:, None] * I + i[None, :],
                     mask=(n[:, None] < N) & (i[None, :] < I), other=0.0).to(ACC)
        q += tl.sum((st * st)[:, None, :] * w2[None, :, :], axis=2)      # [BN, BO]
    d = 1.0 / tl.sqrt(q + eps)
    tl.store(d_ptr + n[:, None] * O + o[None, :], d, mask=(n[:, None] < N) & (o[None, :] < O))


# ---------------------------------------------------------------------------------------------
# Launcher and autograd


def _launch_fwd(weight: torch.Tensor, styles: torch.Tensor, eps: float) -> torch.Tensor:
    o, i, kh, kw = weight.shape
    n = styles.shape[0]
    acc = torch.float64 if torch.float64 in (weight.dtype, styles.dtype) else torch.float32
    d = torch.empty(n, o, dtype=acc, device=styles.device)
    if d.numel() == 0:
        return d.float()
    # A [BN, BO, BI] product per step: 4096 elements on a GPU, larger under the interpreter.
    big = not weight.is_cuda
    block_n = min(next_pow2(n), 16 if big else 8)
    block_o = min(next_pow2(o), 64 if big else 32)
    block_i = min(next_pow2(i), 64 if big else 16)
    grid = (triton.cdiv(n, block_n), triton.cdiv(o, block_o))
    with device_guard(styles):
        _demod_fwd_kernel[grid](weight.contiguous(), styles.contiguous(), d, n, o, i, kh * kw,
                                float(eps), ACC=tl.float64 if acc == torch.float64
                                else tl.float32, BLOCK_N=block_n, BLOCK_O=block_o,
                                BLOCK_I=block_i, num_warps=4)
    return d.float()


class _Demod(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, styles, eps):
        d = _launch_fwd(weight, styles, eps)                        # [N, O] float32
        ctx.save_for_backward(weight, styles, d)
        return d

    @staticmethod
    def backward(ctx, grad):
        weight, styles, d = ctx.saved_tensors
        with torch.autocast(device_type=styles.device.type, enabled=False):
            acc = torch.float64 if torch.float64 in (weight.dtype, styles.dtype) \
                else torch.float32
            w, s = weight.to(acc), styles.to(acc)
            dq = -0.5 * grad.to(acc) * d.to(acc) ** 3               # [N, O]
            g_w = g_s = None
            if ctx.needs_input_grad[0]:
                g_w2 = dq.t() @ s.square()                          # [O, I]
                g_w = (2 * w * g_w2[:, :, None, None]).to(weight.dtype)
            if ctx.needs_input_grad[1]:
                w2 = w.square().sum(dim=(2, 3))                     # [O, I]
                g_s = (2 * s * (dq @ w2)).to(styles.dtype)          # [N, I]
        return g_w, g_s, None


# ---------------------------------------------------------------------------------------------
# Public op


def demod_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8,
                       impl: str = "auto") -> torch.Tensor:
    """weight [O, I, kh, kw] (already scaled), styles [N, I] -> float32 [N, O]."""
    if resolve_impl("demod_coefficients", impl, weight, styles, has_triton=True) == "ref" or (
            impl == "auto" and not triton_supports(weight, styles)):
        return demod_coefficients_ref(weight, styles, eps)
    check_dtypes("demod_coefficients", weight, styles)
    if weight.ndim != 4 or styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
        raise ValueError(f"demod_coefficients: weight [O, I, kh, kw] and styles [N, I] expected "
                         f"(got {tuple(weight.shape)} and {tuple(styles.shape)})")
    return _Demod.apply(weight, styles, float(eps))
