"""3x3 convolution fused with a 2x resampling: PGGAN's fused_scale.

  up:   nearest 2x up -> 3x3 conv (pad 1)   ==  transposed stride-2 conv, 4x4 kernel (pad 1)
  down: 3x3 conv (pad 1) -> 2x2 box down    ==  stride-2 conv, 4x4 kernel (pad 1)

Both identities are exact (linear maps, same zero padding): the 4x4 kernel is the 3x3 one
padded to 5x5 and summed over the four 2x2 shifts (PGGAN's `upscale2d_conv2d` /
`conv2d_downscale2d`), divided by 4 for the box mean. Per output pixel the fused up conv does
4 instead of 9 multiply-adds per (Cin, Cout) pair and never builds the 4x larger input; the
fused down conv computes only the pixels the pool keeps (16 taps at 1/4 of the pixels instead
of 9 taps at all of them): 2.25x fewer conv FLOPs on those layers, in forward and backward.

The parameters stay the 3x3 weights (the equalized-LR scale is applied by the caller before),
so a network's state dict is the same whichever path runs. Bias and activation are the caller's
(for `down` they come after the pool, as in PGGAN's fused path). Everything is torch ops, so
first and second derivatives (R1, WGAN-GP) come from autograd on both paths.

`conv3x3_resample(x, w, mode, fused)` is the one entry point; `*_ref` are the references the
tests compare against.

StyleGAN-style up (`conv3x3_fir_up`): StyleGAN2's conv2d_resample. The reference inserts zeros,
FIR-filters to a 2H+2 image (the FIR's own border included, DC gain 1) and runs a valid 3x3 conv;
the fused path is a transposed stride-2 3x3 conv (9 taps per input pixel, at H x W instead of
2H x 2W: 4x fewer conv FLOPs) followed by the FIR applied once, on the output channels. Exactly
the same function. It differs from the older "FIR up, then zero-padded conv" only in the
one-pixel border (there the conv now sees the filtered image's border instead of zeros).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .resample import _filter, fir_kernel

MODES = ("up", "down")


def fused_kernel(w: torch.Tensor) -> torch.Tensor:
    """[O, I, 3, 3] -> [O, I, 4, 4]: sum of the 3x3 kernel over its four 2x2 shifts."""
    w = F.pad(w, (1, 1, 1, 1))                                     # [O, I, 5, 5]
    return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]


def nearest_up2x(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W], each pixel copied to a 2x2 block. F.interpolate keeps
    channels_last (repeat_interleave would return NCHW); nearest copies are exact."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def upconv_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """nearest 2x up then 3x3 conv: [N, I, H, W] -> [N, O, 2H, 2W]."""
    return F.conv2d(nearest_up2x(x), w, padding=1)


def upconv_fused(x: torch.Tensor, w: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Transposed stride-2 conv with the fused 4x4 kernel of w * gain; output
    (H-1)*2 - 2 + 4 = 2H. conv_transpose2d correlates with the flipped kernel and wants
    [I, O, k, k]; the fused kernel of the flipped 3x3 kernel is the flipped fused kernel."""
    k = fused_kernel(w.flip(2, 3)).transpose(0, 1)                  # [I, O, 4, 4]
    return F.conv_transpose2d(x, k * gain if gain != 1.0 else k, stride=2, padding=1)


def downconv_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """3x3 conv then 2x2 box mean: [N, I, H, W] -> [N, O, H/2, W/2]."""
    return F.avg_pool2d(F.conv2d(x, w, padding=1), 2)


def downconv_fused(x: torch.Tensor, w: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Stride-2 conv with the fused 4x4 kernel of w * gain / 4 (box mean); output
    (H + 2 - 4) / 2 + 1 = H/2."""
    return F.conv2d(x, fused_kernel(w) * (0.25 * gain), stride=2, padding=1)


def conv3x3_resample(x: torch.Tensor, w: torch.Tensor, mode: str, fused: bool,
                     weight_gain: float = 1.0) -> torch.Tensor:
    """x [N, I, H, W], w [O, I, 3, 3] in x's dtype, scaled by weight_gain -> 2x up or down.
    fused: the strided (transposed) 4x4 conv; else the reference (resample + 3x3 conv)."""
    if w.ndim != 4 or w.shape[-2:] != (3, 3):
        raise ValueError(f"conv3x3_resample: expected a 3x3 kernel (got {tuple(w.shape)})")
    if mode == "down" and (x.shape[-1] % 2 or x.shape[-2] % 2):
        raise ValueError(f"conv3x3_resample: down needs even H, W (got {tuple(x.shape)})")
    if mode not in MODES:
        raise ValueError(f"conv3x3_resample: mode must be one of {MODES} (got {mode!r})")
    if fused:
        return (upconv_fused if mode == "up" else downconv_fused)(x, w, weight_gain)
    w = w * weight_gain if weight_gain != 1.0 else w
    return upconv_ref(x, w) if mode == "up" else downconv_ref(x, w)
    raise ValueError(f"conv3x3_resample: mode must be one of {MODES} (got {mode!r})")


def _fir_up_pads(n: int) -> tuple:
    """(before, after) padding of the FIR that follows the transposed conv, for n taps (2x)."""
    p = n - 2
    return (p + 1) // 2, p // 2


def upconv_fir_ref(x: torch.Tensor, w: torch.Tensor, taps: Sequence[float]) -> torch.Tensor:
    """Zero insertion -> FIR (x4 gain) to [2H+2, 2W+2] -> valid 3x3 conv: -> [N, O, 2H, 2W]."""
    k = fir_kernel(taps, x.device, x.dtype) * 4
    n_, c, h, w_ = x.shape
    z = x.new_zeros(n_, c, 2 * h, 2 * w_)
    z[:, :, ::2, ::2] = x                                          # zero insertion
    a, b = _fir_up_pads(k.shape[0])
    return F.conv2d(_filter(z, k, (a + 2, b + 1, a + 2, b + 1)), w)


def upconv_fir_fused(x: torch.Tensor, w: torch.Tensor, taps: Sequence[float]) -> torch.Tensor:
    """Transposed stride-2 3x3 conv ([N, O, 2H+1, 2W+1]) -> the FIR once -> [N, O, 2H, 2W]."""
    k = fir_kernel(taps, x.device, x.dtype) * 4
    t = F.conv_transpose2d(x, w.flip(2, 3).transpose(0, 1), stride=2)
    a, b = _fir_up_pads(k.shape[0])
    return _filter(t, k, (a, b, a, b))


def conv3x3_fir_up(x: torch.Tensor, w: torch.Tensor, taps: Sequence[float],
                   fused: bool) -> torch.Tensor:
    """StyleGAN2's FIR 2x up + 3x3 conv: x [N, I, H, W], w [O, I, 3, 3] in x's dtype."""
    if w.ndim != 4 or w.shape[-2:] != (3, 3):
        raise ValueError(f"conv3x3_fir_up: expected a 3x3 kernel (got {tuple(w.shape)})")
    return upconv_fir_fused(x, w, taps) if fused else upconv_fir_ref(x, w, taps)


def use_fused(setting: str, res: int, threshold: int) -> bool:
    """model.fused_scale -> whether the block working at `res` px runs the fused conv."""
    if setting == "always":
        return True
    if setting == "never":
        return False
    if setting == "auto":
        return res >= threshold
    raise ValueError(f"model.fused_scale must be auto, always or never (got {setting!r})")
