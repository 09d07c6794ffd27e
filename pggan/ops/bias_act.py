"""Bias + activation + gain (+ optional clamp), the epilogue of every conv and dense layer.

y = clamp(act(x + b) * gain, -clamp, clamp)

Triton path: one elementwise forward kernel, one backward kernel that also reduces the bias
gradient (per-tile partial sums, summed deterministically), and double backward through the
same backward kernel: for these piecewise-linear activations dx = dy * act'(.) * gain is
linear in dy with a derivative that is constant almost everywhere in x, so the gradient of the
backward is the backward again (as in StyleGAN2's bias_act). The backward kernel is written
for the general form dx = (dy + gb[c] + gr[row]) * act' * gain with sums of dx over rows (db)
and over channels (dr), which is closed under differentiation; noise_bias_act uses the
per-row (per-pixel) sums for its noise gradient.

What the backward keeps (saved tensors): nothing for `linear` without clamp; the output y when
act' can be read off its sign (relu / lrelu with alpha >= 0, gain > 0, no clamp: y > 0 exactly
where x + b > 0), which costs no memory because the next layer keeps y anyway; the input x
otherwise (clamp, unusual alpha/gain), so the clamp mask is exactly the reference's
(gradient passes where -clamp <= act(x + b) * gain <= clamp, ends included).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._dispatch import resolve_impl
from ._triton_utils import (acc_dtype, block_1d, channel_view, check_dtypes, dense, device_guard,
                            grid_1d, jit, like_layout, num_warps, tile_2d, tile_elems,
                            tile_offsets, tl, tl_dtype, triton, triton_supports, round_to)

# act -> (default alpha, default gain). lrelu's gain sqrt(2) keeps unit variance (He et al.).
ACTIVATIONS = {
    "linear": (0.0, 1.0),
    "relu": (0.0, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
}
_ACT_IDS = {"linear": 0, "relu": 1, "lrelu": 2}
# What the backward reads to find act'(x + b) (see the module docstring).
_REF_NONE, _REF_Y, _REF_X = 0, 1, 2


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


# ---------------------------------------------------------------------------------------------
# Kernels


@jit
def _act_fn(v, alpha, ACT: tl.constexpr):
    if ACT == 1:
        v = tl.where(v < 0, 0.0, v)
    elif ACT == 2:
        v = tl.where(v > 0, v, v * alpha)
    return v


@jit
def _bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, numel, C, inner, alpha, gain, clamp,
                         ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                         X_DT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # Elementwise in storage order; the channel of storage offset `off` is (off // inner) % C.
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = off < numel
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        c = (off // inner) % C
        # The reference adds b.to(x.dtype): round the bias the same way.
        bias = tl.load(b_ptr + c, mask=mask, other=0.0).to(ACC)
        v += round_to(bias, X_DT)
    v = _act_fn(v, alpha, ACT) * gain
    if HAS_CLAMP:
        v = tl.minimum(tl.maximum(v, -clamp), clamp)
    tl.store(y_ptr + off, v, mask=mask)


@jit
def _bias_act_bwd_kernel(dy_ptr, gb_ptr, gr_ptr, ref_ptr, b_ptr, dx_ptr, db_part_ptr,
                         dr_part_ptr, rows, C, inner, alpha, gain, clamp,
                         ACT: tl.constexpr, REF: tl.constexpr, HAS_GB: tl.constexpr,
                         HAS_GR: tl.constexpr, WRITE_DR: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_CLAMP: tl.constexpr, REF_DT: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # dx = (dy + gb[c] + gr[r]) * act'(x + b) * gain * clamp_mask;
    # db_part[pid_r, c] = sum over the tile's rows of dx; dr_part[pid_c, r] = sum over its channels.
    pid_r = tl.program_id(0)
    r = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]      # [BR, 1]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]        # [1, BC]
    cmask = c < C
    mask = (r < rows) & cmask
    off = tile_offsets(r, c, C, inner)
    g = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
    if HAS_GB:
        g += tl.load(gb_ptr + c, mask=cmask, other=0.0).to(ACC)
    if HAS_GR:
        g += tl.load(gr_ptr + r, mask=r < rows, other=0.0).to(ACC)
    d = tl.full([BLOCK_R, BLOCK_C], 1.0, ACC) * gain
    if REF == 1:
        # y > 0 exactly where x + b > 0 (alpha >= 0, gain > 0).
        y = tl.load(ref_ptr + off, mask=mask, other=0.0).to(ACC)
        if ACT == 1:
            d = tl.where(y > 0, d, 0.0)
        elif ACT == 2:
            d = tl.where(y > 0, d, d * alpha)
    elif REF == 2:
        v = tl.load(ref_ptr + off, mask=mask, other=0.0).to(ACC)
        if HAS_BIAS:
            bias = tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
            v += round_to(bias, REF_DT)
        if ACT == 1:
            d = tl.where(v > 0, d, 0.0)
        elif ACT == 2:
            d = tl.where(v > 0, d, d * alpha)
        if HAS_CLAMP:
            t = _act_fn(v, alpha, ACT) * gain
            d = tl.where((t >= -clamp) & (t <= clamp), d, 0.0)
    dx = g * d
    tl.store(dx_ptr + off, dx, mask=mask)
    part = tl.sum(tl.where(mask, dx, 0.0), axis=0)                         # [BC]
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(db_part_ptr + pid_r.to(tl.int64) * C + cc, part, mask=cc < C)
    if WRITE_DR:
        rr = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        part_r = tl.sum(tl.where(mask, dx, 0.0), axis=1)                   # [BR]
        dr_off = tl.program_id(1).to(tl.int64) * rows + rr
        tl.store(dr_part_ptr + dr_off, part_r, mask=rr < rows)


# ---------------------------------------------------------------------------------------------
# Launchers


def _launch_fwd(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str, alpha: float,
                gain: float, clamp: Optional[float]) -> torch.Tensor:
    y = torch.empty_like(x)                                        # x is dense: same strides
    if x.numel() == 0:
        return y
    _, c, inner = channel_view(x, dim)
    block = block_1d(x)
    with device_guard(x):
        _bias_act_fwd_kernel[grid_1d(x.numel(), block)](
            x, b if b is not None else x, y, x.numel(), c, inner, alpha, gain,
            0.0 if clamp is None else float(clamp),
            ACT=_ACT_IDS[act], HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
            X_DT=tl_dtype(x), ACC=acc_dtype(x), BLOCK=block, num_warps=num_warps(block))
    return y


def _launch_bwd(dy: torch.Tensor, gb: Optional[torch.Tensor], gr: Optional[torch.Tensor],
                ref: Optional[torch.Tensor], b: Optional[torch.Tensor], dim: int, act: str,
                alpha: float, gain: float, clamp: Optional[float], ref_kind: int,
                want_dr: bool):
    """-> dx (layout of ref, dtype of dy), db [C] and dr [rows] (None unless want_dr) in the
    compute dtype (fp32 or fp64). Rows are the [outer, inner] positions in storage order: for
    NCHW or channels_last and dim=1, row n * H * W + h * W + w."""
    dy = like_layout(dy, ref) if ref is not None else dense(dy)
    gb = gb.contiguous() if gb is not None else None               # [C]
    gr = gr.contiguous() if gr is not None else None               # [rows]
    dx = torch.empty_like(dy)
    _, c, inner = channel_view(dy, dim)
    rows = dy.numel() // max(1, c)
    part_dtype = torch.float64 if torch.float64 in (dy.dtype, getattr(ref, "dtype", None)) \
        else torch.float32
    if dy.numel() == 0:
        return (dx, torch.zeros(c, dtype=part_dtype, device=dy.device),
                torch.zeros(rows, dtype=part_dtype, device=dy.device) if want_dr else None)
    block_r, block_c = tile_2d(rows, c, inner, tile_elems(dy))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(c, block_c))
    db_part = torch.empty(grid[0], c, dtype=part_dtype, device=dy.device)  # [row tiles, C]
    dr_part = torch.empty(grid[1], rows, dtype=part_dtype, device=dy.device) if want_dr \
        else db_part                                               # [channel tiles, rows]
    with device_guard(dy):
        _bias_act_bwd_kernel[grid](
            dy, gb if gb is not None else dy, gr if gr is not None else dy,
            ref if ref is not None else dy, b if b is not None else dy, dx, db_part, dr_part,
            rows, c, inner, alpha, gain, 0.0 if clamp is None else float(clamp),
            ACT=_ACT_IDS[act], REF=ref_kind, HAS_GB=gb is not None, HAS_GR=gr is not None,
            WRITE_DR=want_dr, HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
            REF_DT=tl_dtype(ref if ref is not None else dy), ACC=acc_dtype(dy, ref), BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=num_warps(block_r * block_c))
    return dx, db_part.sum(dim=0), dr_part.sum(dim=0) if want_dr else None


# ---------------------------------------------------------------------------------------------
# Autograd


def _ref_kind(act: str, alpha: float, gain: float, clamp: Optional[float]) -> int:
    if act == "linear" and clamp is None:
        return _REF_NONE
    if clamp is None and gain > 0 and (act == "relu" or alpha >= 0):
        return _REF_Y
    return _REF_X


class _BiasActGrad(torch.autograd.Function):
    """(dy, gb, gr) -> (dx, db, dr): dx = (dy + gb[c] + gr[row]) * act' * gain (* clamp mask),
    db = sum of dx over the rows (every dim but `dim`), dr = sum of dx over `dim` (only when
    want_dr, else None). Linear in (dy, gb, gr) with a fixed mask, and the adjoint of
    "broadcast over rows / channels" is "sum over rows / channels", so its backward is itself."""

    @staticmethod
    def forward(ctx, dy, gb, gr, ref, b, dim, act, alpha, gain, clamp, ref_kind, want_dr):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(ref, b)
        ctx.args = (dim, act, alpha, gain, clamp, ref_kind)
        ctx.dy_like = (dy.shape, dy.dtype, dy.device)
        return _launch_bwd(dy, gb, gr, ref, b, dim, act, alpha, gain, clamp, ref_kind, want_dr)

    @staticmethod
    def backward(ctx, g_dx, g_db, g_dr):
        ref, b = ctx.saved_tensors
        if g_dx is None and g_db is None and g_dr is None:
            return (None,) * 12
        if g_dx is None:
            shape, dtype, device = ctx.dy_like
            g_dx = torch.zeros(shape, dtype=dtype, device=device)
        want_dr = ctx.needs_input_grad[2]
        g_dy, g_gb, g_gr = _BiasActGrad.apply(g_dx, g_db, g_dr, ref, b, *ctx.args, want_dr)
        return (g_dy, g_gb if ctx.needs_input_grad[1] else None, g_gr) + (None,) * 9


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        x = dense(x)
        y = _launch_fwd(x, b, dim, act, alpha, gain, clamp)
        kind = _ref_kind(act, alpha, gain, clamp)
        ctx.save_for_backward(y if kind == _REF_Y else x if kind == _REF_X else None,
                              b if kind == _REF_X else None)
        ctx.args = (dim, act, alpha, gain, clamp, kind)
        ctx.b_dtype = None if b is None else b.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        ref, b = ctx.saved_tensors
        dim, act, alpha, gain, clamp, kind = ctx.args
        need_dx, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if kind == _REF_NONE and gain == 1.0:
            # Identity backward: dy is dx; db is a plain reduction (differentiable as is).
            dims = [d for d in range(dy.ndim) if d != dim]
            db = dy.sum(dim=dims, dtype=torch.float64 if dy.dtype == torch.float64
                        else torch.float32).to(ctx.b_dtype) if need_db else None
            return dy if need_dx else None, db, None, None, None, None, None
        dx, db, _ = _BiasActGrad.apply(dy, None, None, ref, b, *ctx.args, False)
        return (dx if need_dx else None, db.to(ctx.b_dtype) if need_db else None,
                None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# Public op


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1,
             act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """Add `b` along `dim`, apply `act`, scale by `gain`, clamp to [-clamp, clamp]."""
    if resolve_impl("bias_act", impl, x, b, has_triton=True) == "ref" or (
            impl == "auto" and not triton_supports(x, b)):
        return bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    alpha, gain = _resolve(act, alpha, gain)
    check_dtypes("bias_act", x, b)
    dim = dim % x.ndim
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not match "
                             f"x.shape[{dim}] = {x.shape[dim]}")
        b = b.contiguous()
    clamp = float(clamp) if clamp is not None and clamp >= 0 else None
    return _BiasAct.apply(x, b, dim, act, alpha, gain, clamp)
