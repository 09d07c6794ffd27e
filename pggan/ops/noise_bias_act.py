"""Noise injection + bias + activation: the epilogue of every StyleGAN synthesis conv.

y = clamp(act(x + noise * strength + b) * gain, -clamp, clamp)

`noise` is per-pixel and shared across channels ([N or 1, 1, H, W], StyleGAN sec. 3.2) and
`strength` a learned scalar, so a fused kernel reads x once and writes y once instead of the
three passes (add noise, add bias, activate) of the eager chain.

Triton path: one forward kernel (x, the noise row of each pixel, the strength scalar read on
the device, the bias of each channel), rounding the intermediate sums to x's dtype where the
reference does so that act' is decided on the same value. The backward is bias_act's backward
Function, which also returns per-pixel sums of dx over the channels (dr): d_noise = strength *
dr (summed over the batch for a shared [1, 1, H, W] noise), d_strength = sum(dr * noise).
Double backward follows from bias_act's (its backward is itself) and the torch ops on dr.
Inputs are NCHW-contiguous or channels_last (anything else is made contiguous first).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._dispatch import resolve_impl
from ._triton_utils import (acc_dtype, block_1d, channel_view, check_dtypes, dense, device_guard,
                            grid_1d, jit, num_warps, round_to, tl, tl_dtype, triton_supports)
from .bias_act import (_ACT_IDS, _REF_NONE, _REF_X, _REF_Y, _act_fn, _BiasActGrad, _ref_kind,
                       _resolve, bias_act, bias_act_ref)


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


# ---------------------------------------------------------------------------------------------
# Kernel


@jit
def _noise_bias_act_fwd_kernel(x_ptr, noise_ptr, s_ptr, b_ptr, y_ptr, numel, C, inner,
                               noise_rows, alpha, gain, clamp, ACT: tl.constexpr,
                               HAS_STRENGTH: tl.constexpr, HAS_BIAS: tl.constexpr,
                               HAS_CLAMP: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr,
                               BLOCK: tl.constexpr):
    # Elementwise in storage order. Element `off` is channel (off // inner) % C of pixel row
    # r = n * H * W + h * W + w; the noise is [N or 1, 1, H, W], so its element is r % noise_rows.
    # DT is x's dtype: sums are rounded to it where the reference's torch ops round.
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = off < numel
    v = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    r = (off // (C * inner)) * inner + off % inner
    nz = round_to(tl.load(noise_ptr + r % noise_rows, mask=mask, other=0.0).to(ACC), DT)
    if HAS_STRENGTH:
        s = round_to(tl.load(s_ptr).to(ACC), DT)
        nz = round_to(nz * s, DT)
    v = round_to(v + nz, DT)
    if HAS_BIAS:
        c = (off // inner) % C
        v += round_to(tl.load(b_ptr + c, mask=mask, other=0.0).to(ACC), DT)
    v = _act_fn(v, alpha, ACT) * gain
    if HAS_CLAMP:
        v = tl.minimum(tl.maximum(v, -clamp), clamp)
    tl.store(y_ptr + off, v, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launcher and autograd


def _launch_fwd(x, noise, strength, b, act, alpha, gain, clamp) -> torch.Tensor:
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    _, c, inner = channel_view(x, 1)
    block = block_1d(x)
    with device_guard(x):
        _noise_bias_act_fwd_kernel[grid_1d(x.numel(), block)](
            x, noise, strength if strength is not None else noise, b if b is not None else x,
            y, x.numel(), c, inner, noise.numel(), alpha, gain,
            0.0 if clamp is None else float(clamp), ACT=_ACT_IDS[act],
            HAS_STRENGTH=strength is not None, HAS_BIAS=b is not None,
            HAS_CLAMP=clamp is not None, DT=tl_dtype(x), ACC=acc_dtype(x), BLOCK=block,
            num_warps=num_warps(block))
    return y


class _NoiseBiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, noise, strength, b, act, alpha, gain, clamp):
        y = _launch_fwd(x, noise, strength, b, act, alpha, gain, clamp)
        kind = _ref_kind(act, alpha, gain, clamp)
        ref = y if kind == _REF_Y else None
        if kind == _REF_X:
            # act' and the clamp mask need the pre-activation: x + noise * strength, rounded as
            # in the reference (the bias is added inside the backward kernel).
            s = strength.to(x.dtype) if strength is not None else 1.0
            ref = dense(x + noise.to(x.dtype) * s)
        ctx.save_for_backward(ref, b if kind == _REF_X else None, noise, strength)
        ctx.args = (1, act, alpha, gain, clamp, kind)
        ctx.b_dtype = None if b is None else b.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        ref, b, noise, strength = ctx.saved_tensors
        _, act, alpha, gain, clamp, kind = ctx.args
        n, _, h, w = dy.shape
        need_x, need_noise, need_s, need_b = ctx.needs_input_grad[:4]
        acc = torch.float64 if dy.dtype == torch.float64 else torch.float32
        if kind == _REF_NONE and gain == 1.0:
            dx, db, dr = dy, dy.sum(dim=(0, 2, 3), dtype=acc), dy.sum(dim=1, dtype=acc)
        else:
            dx, db, dr = _BiasActGrad.apply(dy, None, None, ref, b, *ctx.args, True)
        dr = dr.reshape(n, 1, h, w)                                # sum of dx over channels
        d_noise = d_s = None
        if need_noise:
            d_noise = dr * strength.to(acc) if strength is not None else dr
            if noise.shape[0] == 1:
                d_noise = d_noise.sum(dim=0, keepdim=True)
            d_noise = d_noise.to(noise.dtype)
        if need_s:
            d_s = (dr * noise.to(acc)).sum().reshape(strength.shape).to(strength.dtype)
        return (dx if need_x else None, d_noise, d_s,
                db.to(ctx.b_dtype) if need_b else None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# Public op


def noise_bias_act(x: torch.Tensor, noise: Optional[torch.Tensor] = None,
                   strength: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None,
                   act: str = "lrelu", alpha: Optional[float] = None,
                   gain: Optional[float] = None, clamp: Optional[float] = None,
                   impl: str = "auto") -> torch.Tensor:
    """x [N, C, H, W] + noise [N|1, 1, H, W] * strength (scalar) + b [C] -> act -> * gain.

    noise=None skips the injection (noise_mode='none'); strength=None means strength 1.
    """
    if resolve_impl("noise_bias_act", impl, x, noise, strength, b, has_triton=True) == "ref" or (
            impl == "auto" and not triton_supports(x, noise, strength, b)):
        return noise_bias_act_ref(x, noise, strength, b, act, alpha, gain, clamp)
    check_dtypes("noise_bias_act", x, noise, strength, b)
    if x.ndim != 4:
        raise ValueError(f"noise_bias_act: x must be [N, C, H, W] (got {tuple(x.shape)})")
    if noise is None:
        return bias_act(x, b, 1, act, alpha, gain, clamp, impl="triton")
    _check_noise(x, noise)
    alpha, gain = _resolve(act, alpha, gain)
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[1]:
            raise ValueError(f"noise_bias_act: bias of shape {tuple(b.shape)} does not match "
                             f"x.shape[1] = {x.shape[1]}")
        b = b.contiguous()
    if strength is not None and strength.numel() != 1:
        raise ValueError(f"noise_bias_act: strength must be a scalar tensor (got shape "
                         f"{tuple(strength.shape)})")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()                                         # rows must be n, h, w
    clamp = float(clamp) if clamp is not None and clamp >= 0 else None
    return _NoiseBiasAct.apply(x, noise.contiguous(), strength, b, act, alpha, gain, clamp)
