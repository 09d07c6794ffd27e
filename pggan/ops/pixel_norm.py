"""PixelNorm (PGGAN sec. 4.2): normalise each pixel's feature vector to unit RMS.

y = x / sqrt(mean_c(x^2) + eps)

Triton path: the tensor is seen as [outer, C, inner] along `dim` (NCHW: [N, C, H*W];
channels_last or [N, C] latents: [rows, C, 1]); a program owns a tile of rows and walks the
channel axis (once when the whole channel vector fits its tile, twice otherwise: sums, then
writes). Backward is its own Function (one kernel, same tiling). Double backward: the part
along dy is that same backward kernel (dx is linear in dy and its Jacobian is symmetric); the
part along x is a closed form in torch ops (below), so every order of derivative exists.
Double backward runs only if a loss differentiates through G's input gradient (e.g. a path
length penalty); PGGAN's WGAN-GP penalty differentiates D alone.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl
from ._triton_utils import (acc_dtype, channel_view, check_dtypes, dense, device_guard, jit,
                            like_layout, num_warps, tile_2d, tile_elems, tile_offsets, tl,
                            triton, triton_supports)


def pixel_norm_ref(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def _pixel_norm_fwd_kernel(x_ptr, y_ptr, rows, C, inner, eps, ACC: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                           ONE_CHUNK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # [BR, 1]
    rmask = r < rows
    cs = tl.arange(0, BLOCK_C)[None, :]                                           # [1, BC]
    if ONE_CHUNK:
        mask = rmask & (cs < C)
        off = tile_offsets(r, cs, C, inner)
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
        scale = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)                    # [BR]
        tl.store(y_ptr + off, x * scale[:, None], mask=mask)
    else:
        sumsq = tl.zeros([BLOCK_R], ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            mask = rmask & (c < C)
            x = tl.load(x_ptr + tile_offsets(r, c, C, inner), mask=mask, other=0.0).to(ACC)
            sumsq += tl.sum(x * x, axis=1)
        scale = (1.0 / tl.sqrt(sumsq / C + eps))[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            mask = rmask & (c < C)
            off = tile_offsets(r, c, C, inner)
            x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
            tl.store(y_ptr + off, x * scale, mask=mask)


@jit
def _pixel_norm_bwd_kernel(x_ptr, dy_ptr, dx_ptr, rows, C, inner, eps, ACC: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                           ONE_CHUNK: tl.constexpr):
    # r = (mean(x^2) + eps)^-1/2; dx = r * dy - r^3 * mean(dy * x) * x
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    rmask = r < rows
    cs = tl.arange(0, BLOCK_C)[None, :]
    if ONE_CHUNK:
        mask = rmask & (cs < C)
        off = tile_offsets(r, cs, C, inner)
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
        rs = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)
        k = rs * rs * rs * tl.sum(dy * x, axis=1) / C
        tl.store(dx_ptr + off, rs[:, None] * dy - k[:, None] * x, mask=mask)
    else:
        sumsq = tl.zeros([BLOCK_R], ACC)
        sumdx = tl.zeros([BLOCK_R], ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            mask = rmask & (c < C)
            off = tile_offsets(r, c, C, inner)
            x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
            dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
            sumsq += tl.sum(x * x, axis=1)
            sumdx += tl.sum(dy * x, axis=1)
        rs = 1.0 / tl.sqrt(sumsq / C + eps)
        k = (rs * rs * rs * sumdx / C)[:, None]
        rs = rs[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            mask = rmask & (c < C)
            off = tile_offsets(r, c, C, inner)
            x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
            dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
            tl.store(dx_ptr + off, rs * dy - k * x, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers


def _launch(kernel, x: torch.Tensor, dy, dim: int, eps: float) -> torch.Tensor:
    """Forward (dy None) or backward of a dense x; the output has x's layout and dtype."""
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    _, c, inner = channel_view(x, dim)
    rows = x.numel() // c
    block_r, block_c = tile_2d(rows, c, inner, tile_elems(x))
    grid = (triton.cdiv(rows, block_r),)
    args = (x, out) if dy is None else (x, dy, out)
    with device_guard(x):
        kernel[grid](*args, rows, c, inner, float(eps), ACC=acc_dtype(x), BLOCK_R=block_r,
                     BLOCK_C=block_c, ONE_CHUNK=block_c >= c,
                     num_warps=num_warps(block_r * block_c))
    return out


def _grad_x_of_backward(x, dy, g, dim, eps):
    """d<g, dx(x, dy)>/dx in torch ops. With r = (mean x^2 + eps)^-1/2, s = mean(dy x),
    A = mean(g dy), B = mean(g x) (means over `dim`):
    r^3 * (-A x + 3 r^2 s B x - B dy - s g)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, dyf, gf = x.to(acc), dy.to(acc), g.to(acc)
    mean = lambda t: t.mean(dim=dim, keepdim=True)  # noqa: E731
    r = torch.rsqrt(mean(xf * xf) + eps)
    s, a, bb = mean(dyf * xf), mean(gf * dyf), mean(gf * xf)
    r3 = r * r * r
    return (r3 * ((3 * r * r * s * bb - a) * xf - bb * dyf - s * gf)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Autograd


class _PixelNormGrad(torch.autograd.Function):
    """(x, dy) -> dx."""

    @staticmethod
    def forward(ctx, x, dy, dim, eps):
        dy = like_layout(dy, x)
        ctx.save_for_backward(x, dy)
        ctx.args = (dim, eps)
        return _launch(_pixel_norm_bwd_kernel, x, dy, dim, eps)

    @staticmethod
    def backward(ctx, g):
        x, dy = ctx.saved_tensors
        dim, eps = ctx.args
        g = like_layout(g, x)
        g_x = _grad_x_of_backward(x, dy, g, dim, eps) if ctx.needs_input_grad[0] else None
        # dx = J dy with J symmetric, so the gradient along dy is J g: the backward again.
        g_dy = _PixelNormGrad.apply(x, g, dim, eps) if ctx.needs_input_grad[1] else None
        return g_x, g_dy, None, None


class _PixelNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, eps):
        x = dense(x)
        ctx.save_for_backward(x)
        ctx.args = (dim, eps)
        return _launch(_pixel_norm_fwd_kernel, x, None, dim, eps)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return _PixelNormGrad.apply(x, dy, *ctx.args), None, None


# ---------------------------------------------------------------------------------------------
# Public op


def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-8,
               impl: str = "auto") -> torch.Tensor:
    if resolve_impl("pixel_norm", impl, x, has_triton=True) == "ref" or (
            impl == "auto" and not triton_supports(x)):
        return pixel_norm_ref(x, dim, eps)
    check_dtypes("pixel_norm", x)
    return _PixelNorm.apply(x, dim % x.ndim, float(eps))
