"""Minibatch standard deviation (PGGAN sec. 3; StyleGAN2's grouped form).

Splits the batch into groups of `group_size` consecutive samples (contiguous groups, so a
global batch split across GPUs forms the same groups as on one GPU when the per-GPU batch is a
multiple of the group size), computes the stddev of every feature over each
group, averages it over (channels in the feature group, H, W) and appends `num_channels` constant
feature maps to each sample.

Group size fallback (documented behaviour): when the batch N is not divisible by `group_size`,
the group is the largest divisor of N not above `group_size` (N=6, group 4 -> 3; N=1 -> 1, whose
stddev is 0). The per-GPU batch therefore never fails, and the usual case (N divisible) is
exactly the paper's.

Triton path (same groups, same fallback): one forward kernel reads x once, copies it into the
first C channels of the output and reduces per-tile partial sums of the group stddevs (summed
deterministically afterwards); the F statistic channels are then filled in. Backward is its own
Function (one kernel): dx = dout[:, :C] + ds / (K G) * (x - mean_g) / std_g, with ds the sum of
dout's statistic channels over the group and H, W, and K = (C / F) * H * W. Double backward
(this op sits inside D's gradient penalty) is a closed form in torch ops (below). Inputs are
NCHW-contiguous or channels_last (anything else is made contiguous first); the output keeps
the input's memory format.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl
from ._triton_utils import (acc_dtype, block_1d, check_dtypes, device_guard, jit, next_pow2,
                            num_warps, tl, triton, triton_supports)


def effective_group_size(batch: int, group_size: int) -> int:
    g = max(1, min(group_size, batch))
    while batch % g:
        g -= 1
    return g


def minibatch_std_ref(x: torch.Tensor, group_size: int = 4, num_channels: int = 1,
                      eps: float = 1e-8) -> torch.Tensor:
    n, c, h, w = x.shape                                           # [N, C, H, W]
    if c % num_channels:
        raise ValueError(f"minibatch_std: {c} channels not divisible by num_channels="
                         f"{num_channels}")
    g = effective_group_size(n, group_size)
    y = x.reshape(n // g, g, num_channels, c // num_channels, h, w)  # [M, G, F, c, H, W]
    y = y.to(torch.promote_types(x.dtype, torch.float32))        # fp32 statistics (fp64 kept)
    y = y - y.mean(dim=1, keepdim=True)                            # deviation from group mean
    y = (y.square().mean(dim=1) + eps).sqrt()                      # [M, F, c, H, W]
    y = y.mean(dim=(2, 3, 4))                                      # [M, F]
    y = y.reshape(-1, num_channels, 1, 1).to(x.dtype)              # [M, F, 1, 1]
    y = y.repeat_interleave(g, dim=0).expand(n, num_channels, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)                                # [N, C + F, H, W]


# ---------------------------------------------------------------------------------------------
# Kernels
#
# Grid (K / BLOCK, M * F) (the long axis first: CUDA caps grid axes 1 and 2 at 65535): program
# (k, mf) owns group m's G samples x feature group f's
# elements j in [k * BLOCK, (k + 1) * BLOCK) of K = (C / F) * H * W, as a [G_PAD, BLOCK] tile.
# Element j is channel f * C/F + j // HW, pixel j % HW, at n * s_n + c * s_c + p * s_p
# (s_p = 1, s_c = HW for NCHW; s_p = C, s_c = 1 for channels_last).


@jit
def _program_tile(F, G, CF, HW, G_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """(k, mf, n, c, p, mask) of this program's [G_PAD, BLOCK] tile (see the grid above)."""
    k = tl.program_id(0)
    mf = tl.program_id(1)
    m = mf // F
    f = mf % F
    g = tl.arange(0, G_PAD)[:, None]                                     # [G_PAD, 1]
    j = k.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)[None, :]            # [1, BLOCK]
    n = (m * G + g).to(tl.int64)
    c = f * CF + j // HW
    p = j % HW
    mask = (g < G) & (j < CF * HW)
    return k, mf, n, c, p, mask


@jit
def _group_stats(x, mask, G, eps):
    # Population stddev over the group axis (axis 0) of a masked [G_PAD, BLOCK] tile.
    mean = tl.sum(x, axis=0) / G
    d = tl.where(mask, x - mean[None, :], 0.0)
    std = tl.sqrt(tl.sum(d * d, axis=0) / G + eps)
    return d, std


@jit
def _mbstd_fwd_kernel(x_ptr, out_ptr, part_ptr, G, F, CF, HW, eps,
                      xs_n, xs_c, xs_p, os_n, os_c, os_p,
                      ACC: tl.constexpr, G_PAD: tl.constexpr, BLOCK: tl.constexpr):
    k, mf, n, c, p, mask = _program_tile(F, G, CF, HW, G_PAD, BLOCK)
    x = tl.load(x_ptr + n * xs_n + c * xs_c + p * xs_p, mask=mask, other=0.0)
    tl.store(out_ptr + n * os_n + c * os_c + p * os_p, x, mask=mask)   # out[:, :C] = x
    _, std = _group_stats(x.to(ACC), mask, G, eps)
    j = k.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    part = tl.sum(tl.where(j < CF * HW, std, 0.0), axis=0)
    tl.store(part_ptr + mf * tl.num_programs(0) + k, part)


@jit
def _mbstd_bwd_kernel(x_ptr, dout_ptr, coef_ptr, dx_ptr, G, F, CF, HW, eps,
                      xs_n, xs_c, xs_p, ds_n, ds_c, ds_p,
                      ACC: tl.constexpr, G_PAD: tl.constexpr, BLOCK: tl.constexpr):
    # dx = dout[:, :C] + coef[m, f] * (x - mean_g) / std_g, coef = ds / (K G).
    k, mf, n, c, p, mask = _program_tile(F, G, CF, HW, G_PAD, BLOCK)
    x_off = n * xs_n + c * xs_c + p * xs_p
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(ACC)
    d, std = _group_stats(x, mask, G, eps)
    dout = tl.load(dout_ptr + n * ds_n + c * ds_c + p * ds_p, mask=mask, other=0.0).to(ACC)
    coef = tl.load(coef_ptr + mf).to(ACC)
    tl.store(dx_ptr + x_off, dout + coef * d / std[None, :], mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers


def _nchw_strides(t: torch.Tensor):
    """(s_n, s_c, s_p) when pixel p = h * W + w sits at p * s_p (H and W mergeable), else None."""
    n, c, h, w = t.shape
    if h > 1 and w > 1 and t.stride(2) != w * t.stride(3):
        return None
    s_p = t.stride(3) if w > 1 else t.stride(2)
    return t.stride(0), t.stride(1), s_p


def _prepare(x: torch.Tensor) -> torch.Tensor:
    """NCHW-contiguous or channels_last as given; anything else becomes contiguous."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _tile(x: torch.Tensor, g: int, k_elems: int):
    g_pad = next_pow2(g)
    block = max(1, min(next_pow2(k_elems), block_1d(x) // g_pad))
    return g_pad, block


def _launch_fwd(x: torch.Tensor, g: int, f: int, eps: float) -> torch.Tensor:
    n, c, h, w = x.shape
    fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)) else torch.contiguous_format
    out = torch.empty((n, c + f, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    m, cf, hw = n // g, c // f, h * w
    k_elems = cf * hw
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.numel() == 0:
        return out.copy_(minibatch_std_ref(x, g, f, eps))
    g_pad, block = _tile(x, g, k_elems)
    grid = (triton.cdiv(k_elems, block), m * f)
    part = torch.empty(m * f, grid[0], dtype=acc, device=x.device)  # [M * F, K tiles]
    with device_guard(x):
        _mbstd_fwd_kernel[grid](x, out, part, g, f, cf, hw, float(eps), *_nchw_strides(x),
                                *_nchw_strides(out), ACC=acc_dtype(x), G_PAD=g_pad, BLOCK=block,
                                num_warps=num_warps(g_pad * block))
    stat = (part.sum(dim=1) / k_elems).to(x.dtype)                 # [M * F]
    out[:, c:] = stat.reshape(m, 1, f, 1, 1).expand(m, g, f, h, w).reshape(n, f, h, w)
    return out


def _launch_bwd(x: torch.Tensor, dout: torch.Tensor, g: int, f: int, eps: float) -> torch.Tensor:
    n, c, h, w = x.shape
    dx = torch.empty_like(x)                                       # x's memory format
    if x.numel() == 0:
        return dx
    m, cf, hw = n // g, c // f, h * w
    k_elems = cf * hw
    if _nchw_strides(dout) is None:
        dout = dout.contiguous()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    ds = dout[:, c:].sum(dim=(2, 3), dtype=acc).reshape(m, g, f).sum(dim=1)  # [M, F]
    coef = (ds / (k_elems * g)).reshape(-1).contiguous()           # [M * F]
    g_pad, block = _tile(x, g, k_elems)
    grid = (triton.cdiv(k_elems, block), m * f)
    with device_guard(x):
        _mbstd_bwd_kernel[grid](x, dout, coef, dx, g, f, cf, hw, float(eps), *_nchw_strides(x),
                                *_nchw_strides(dout), ACC=acc_dtype(x), G_PAD=g_pad,
                                BLOCK=block, num_warps=num_warps(g_pad * block))
    return dx


def _grad_of_backward(x, dout, gg, g, f, eps):
    """Gradients of <gg, dx(x, dout)> in torch ops. With u = (x - mean_g) / std_g per element
    of the group, coef = ds / (K G):
      along x:        coef / std_g * (gg - mean_g(gg) - u * mean_g(gg * u))
      along dout:     gg in the first C channels; sum_{group, feature group}(gg * u) / (K G)
                      broadcast over each sample of the group and H, W in statistic channel f."""
    n, c, h, w = x.shape
    m, cf = n // g, c // f
    k_elems = cf * h * w
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x6 = x.to(acc).reshape(m, g, f, cf, h, w)                      # [M, G, F, c, H, W]
    gg6 = gg.to(acc).reshape(m, g, f, cf, h, w)
    d = x6 - x6.mean(dim=1, keepdim=True)
    std = (d.square().mean(dim=1, keepdim=True) + eps).sqrt()      # [M, 1, F, c, H, W]
    u = d / std
    ds = dout[:, c:].to(acc).sum(dim=(2, 3)).reshape(m, g, f).sum(dim=1)  # [M, F]
    coef = (ds / (k_elems * g)).reshape(m, 1, f, 1, 1, 1)
    gu = gg6 * u
    g_x = coef / std * (gg6 - gg6.mean(dim=1, keepdim=True) - u * gu.mean(dim=1, keepdim=True))
    g_stat = gu.sum(dim=(1, 3, 4, 5)) / (k_elems * g)              # [M, F]
    g_stat = g_stat.reshape(m, 1, f, 1, 1).expand(m, g, f, h, w).reshape(n, f, h, w)
    g_dout = torch.cat([gg.to(dout.dtype), g_stat.to(dout.dtype)], dim=1)
    return g_x.reshape(n, c, h, w).to(x.dtype), g_dout


# ---------------------------------------------------------------------------------------------
# Autograd


class _MinibatchStdGrad(torch.autograd.Function):
    """(x, dout) -> dx."""

    @staticmethod
    def forward(ctx, x, dout, g, f, eps):
        ctx.save_for_backward(x, dout)
        ctx.args = (g, f, eps)
        return _launch_bwd(x, dout, g, f, eps)

    @staticmethod
    def backward(ctx, gg):
        x, dout = ctx.saved_tensors
        g_x, g_dout = _grad_of_backward(x, dout, gg, *ctx.args)
        return (g_x if ctx.needs_input_grad[0] else None,
                g_dout if ctx.needs_input_grad[1] else None, None, None, None)


class _MinibatchStd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, f, eps):
        x = _prepare(x)
        ctx.save_for_backward(x)
        ctx.args = (g, f, eps)
        return _launch_fwd(x, g, f, eps)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        return _MinibatchStdGrad.apply(x, dout, *ctx.args), None, None, None


# ---------------------------------------------------------------------------------------------
# Public op


def minibatch_std(x: torch.Tensor, group_size: int = 4, num_channels: int = 1,
                  eps: float = 1e-8, impl: str = "auto") -> torch.Tensor:
    if resolve_impl("minibatch_std", impl, x, has_triton=True) == "ref" or (
            impl == "auto" and not triton_supports(x)):
        return minibatch_std_ref(x, group_size, num_channels, eps)
    check_dtypes("minibatch_std", x)
    if x.ndim != 4:
        raise ValueError(f"minibatch_std: expects [N, C, H, W] (got {tuple(x.shape)})")
    n, c = x.shape[:2]
    if c % num_channels:
        raise ValueError(f"minibatch_std: {c} channels not divisible by num_channels="
                         f"{num_channels}")
    g = effective_group_size(n, group_size)
    return _MinibatchStd.apply(x, g, int(num_channels), float(eps))
