"""Alpha fade-in (PGGAN sec. 3): out = lerp(old, new, alpha) = old + alpha * (new - old).

At alpha = 0 the result is exactly `old` (the smaller network's output), at alpha = 1 exactly
`new`. Real images are blended the same way (pggan/data/reals.py).

Triton path: one elementwise kernel with torch.lerp's formula (old + a (new - old) for
|a| < 0.5, new - (new - old)(1 - a) otherwise, so both endpoints stay exact). The backward,
d_old = (1 - a) dy and d_new = a dy, is one kernel writing both; its own backward is the
forward lerp of the two incoming gradients, so every order of derivative stays in Triton.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl
from ._triton_utils import (acc_dtype, block_1d, check_dtypes, dense, device_guard, grid_1d, jit,
                            like_layout, num_warps, round_to, tl, tl_dtype, triton_supports)


def fade_in_ref(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    if old.shape != new.shape:
        raise ValueError(f"fade_in: shapes differ {tuple(old.shape)} vs {tuple(new.shape)}")
    return torch.lerp(old, new.to(old.dtype), float(alpha))


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def _fade_in_fwd_kernel(old_ptr, new_ptr, out_ptr, numel, alpha, OLD_DT: tl.constexpr,
                        ACC: tl.constexpr, FROM_END: tl.constexpr, BLOCK: tl.constexpr):
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = off < numel
    a = tl.load(old_ptr + off, mask=mask, other=0.0).to(ACC)
    # The reference casts new to old's dtype first.
    b = round_to(tl.load(new_ptr + off, mask=mask, other=0.0).to(ACC), OLD_DT)
    # fma as torch's own lerp kernels round it (one rounding of the product-sum).
    if FROM_END:
        y = tl.fma(a - b, 1.0 - alpha, b)
    else:
        y = tl.fma(b - a, alpha, a)
    tl.store(out_ptr + off, y, mask=mask)


@jit
def _fade_in_bwd_kernel(dy_ptr, d_old_ptr, d_new_ptr, numel, w_old, w_new, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = off < numel
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
    tl.store(d_old_ptr + off, dy * w_old, mask=mask)
    tl.store(d_new_ptr + off, dy * w_new, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers


def _launch_fwd(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    """old dense; new laid out like old (any float dtype); out like old."""
    out = torch.empty_like(old)
    if old.numel() == 0:
        return out
    block = block_1d(old)
    with device_guard(old):
        _fade_in_fwd_kernel[grid_1d(old.numel(), block)](
            old, new, out, old.numel(), alpha, OLD_DT=tl_dtype(old), ACC=acc_dtype(old, new),
            FROM_END=abs(alpha) >= 0.5, BLOCK=block, num_warps=num_warps(block))
    return out


def _launch_bwd(dy: torch.Tensor, alpha: float, old_dtype, new_dtype):
    dy = dense(dy)
    d_old = torch.empty_like(dy, dtype=old_dtype)
    d_new = torch.empty_like(dy, dtype=new_dtype)
    if dy.numel() == 0:
        return d_old, d_new
    block = block_1d(dy)
    with device_guard(dy):
        # Weights as torch's lerp backward forms them: (1 - alpha) in double, then the dtype.
        _fade_in_bwd_kernel[grid_1d(dy.numel(), block)](
            dy, d_old, d_new, dy.numel(), 1.0 - alpha, alpha, ACC=acc_dtype(dy),
            BLOCK=block, num_warps=num_warps(block))
    return d_old, d_new


# ---------------------------------------------------------------------------------------------
# Autograd


class _FadeInGrad(torch.autograd.Function):
    """dy -> ((1 - a) dy, a dy); the backward of that is lerp(g_old, g_new, a)."""

    @staticmethod
    def forward(ctx, dy, alpha, old_dtype, new_dtype):
        ctx.set_materialize_grads(False)
        ctx.alpha = alpha
        ctx.dy_like = (dy.shape, dy.dtype, dy.device)
        return _launch_bwd(dy, alpha, old_dtype, new_dtype)

    @staticmethod
    def backward(ctx, g_old, g_new):
        if g_old is None and g_new is None:
            return None, None, None, None
        shape, dtype, device = ctx.dy_like
        if g_old is None:
            g_old = torch.zeros(shape, dtype=dtype, device=device)
        if g_new is None:
            g_new = torch.zeros(shape, dtype=dtype, device=device)
        return _FadeIn.apply(g_old.to(dtype), g_new, ctx.alpha), None, None, None


class _FadeIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, old, new, alpha):
        old = dense(old)
        new = like_layout(new, old)
        ctx.alpha = alpha
        ctx.dtypes = (old.dtype, new.dtype)
        return _launch_fwd(old, new, alpha)

    @staticmethod
    def backward(ctx, dy):
        d_old, d_new = _FadeInGrad.apply(dy, ctx.alpha, *ctx.dtypes)
        return (d_old if ctx.needs_input_grad[0] else None,
                d_new if ctx.needs_input_grad[1] else None, None)


# ---------------------------------------------------------------------------------------------
# Public op


def fade_in(old: torch.Tensor, new: torch.Tensor, alpha: float, impl: str = "auto"):
    if resolve_impl("fade_in", impl, old, new, has_triton=True) == "ref" or (
            impl == "auto" and not triton_supports(old, new)):
        return fade_in_ref(old, new, alpha)
    check_dtypes("fade_in", old, new)
    if old.shape != new.shape:
        raise ValueError(f"fade_in: shapes differ {tuple(old.shape)} vs {tuple(new.shape)}")
    return _FadeIn.apply(old, new, float(alpha))
