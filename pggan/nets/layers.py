"""Building blocks shared by the PGGAN and StyleGAN-style networks.

Equalized learning rate (PGGAN sec. 4.1): weights are stored ~ N(0, 1) / lr_mult and scaled at
run time by `gain / sqrt(fan_in) * lr_mult`, so every layer learns at the same speed under Adam.
Biases are stored / lr_mult and scaled by lr_mult. The bias add and activation run through the
fused `bias_act` op.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import bias_act, downsample2d, minibatch_std, pixel_norm
from ..ops.resample_conv import conv3x3_resample

SQRT2 = math.sqrt(2.0)

# model.fused_scale "auto": blocks working at this many pixels and more fold their 2x
# resampling into a strided conv. Chosen by measurement (benchmarks/RESULTS.md, "Fused
# resampling convolutions", 2-core x86_64 CPU, paired turns of the same network): the fused
# step was faster at every stage, 1.08x at 8 px, 1.22x at 16, 1.45x at 32 (demo-cpu network)
# and more at 128-256 px (paper network), so every block fuses. PGGAN's code switched at
# 128 px; whether small GPU stages prefer the unfused convs is for the GPU suite to show.
FUSED_SCALE_AUTO_RES = 8


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 gain: float = 1.0, lr_mult: float = 1.0, bias_init: float = 0.0,
                 act: str = "linear", act_gain: float = 1.0, impl: str = "auto"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mult)) \
            if bias else None
        self.weight_scale = gain / math.sqrt(in_features) * lr_mult   # He constant, run time
        self.lr_mult = lr_mult
        self.act, self.act_gain, self.impl = act, act_gain, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:             # [N, in] -> [N, out]
        x = x.matmul((self.weight * self.weight_scale).to(x.dtype).t())
        b = self.bias * self.lr_mult if self.bias is not None else None
        if b is None and self.act == "linear" and self.act_gain == 1.0:
            return x
        return bias_act(x, b, dim=1, act=self.act, gain=self.act_gain, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, act={self.act}, "
                f"scale={self.weight_scale:.4g}")


class EqualizedConv2d(nn.Module):
    """Equalized-LR conv (stride 1, same padding), optionally with a 2x resampling:

      resample None     conv -> bias + act
      resample "up"     nearest 2x up -> conv -> bias + act; fused: one transposed stride-2
                        4x4 conv (exactly the same function)
      resample "down"   fused False: conv -> bias + act -> 2x2 box (PGGAN's non-fused path)
                        fused True:  stride-2 4x4 conv (= conv -> box) -> bias + act, PGGAN's
                        fused path; the activation after the pool makes it another function
    The parameters are the same in every case, so states load into either path."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 bias: bool = True, gain: float = SQRT2, lr_mult: float = 1.0,
                 act: str = "linear", act_gain: float = 1.0, impl: str = "auto",
                 resample: Optional[str] = None, fused: bool = False):
        super().__init__()
        if resample not in (None, "up", "down") or (resample and kernel_size != 3):
            raise ValueError(f"EqualizedConv2d: resample must be None, 'up' or 'down' with a "
                             f"3x3 kernel (got {resample!r}, k={kernel_size})")
        self.resample, self.fused = resample, bool(fused)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, \
            kernel_size
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mult)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_scale = gain / math.sqrt(in_channels * kernel_size ** 2) * lr_mult
        self.lr_mult = lr_mult
        self.act, self.act_gain, self.impl = act, act_gain, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:             # [N, Cin, H, W]
        b = self.bias * self.lr_mult if self.bias is not None else None
        if self.resample is None or (self.resample == "down" and not self.fused):
            w = (self.weight * self.weight_scale).to(x.dtype)
            x = F.conv2d(x, w, padding=self.kernel_size // 2)       # [N, Cout, H, W]
            x = bias_act(x, b, dim=1, act=self.act, gain=self.act_gain, impl=self.impl)
            return x if self.resample is None else downsample2d(x, mode="box")
        # The He scale goes into the (fused) kernel in the same multiply as its 1/4 box weight.
        x = conv3x3_resample(x, self.weight.to(x.dtype), self.resample, self.fused,
                             weight_gain=self.weight_scale)         # [N, Cout, 2H or H/2, ..]
        return bias_act(x, b, dim=1, act=self.act, gain=self.act_gain, impl=self.impl)

    def extra_repr(self) -> str:
        rs = f", resample={self.resample}, fused={self.fused}" if self.resample else ""
        return (f"{self.in_channels}->{self.out_channels}, k={self.kernel_size}, "
                f"act={self.act}, scale={self.weight_scale:.4g}{rs}")


class PixelNorm(nn.Module):
    def __init__(self, impl: str = "auto"):
        super().__init__()
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, dim=1, impl=self.impl)


class MinibatchStd(nn.Module):
    def __init__(self, group_size: int = 4, num_channels: int = 1, impl: str = "auto"):
        super().__init__()
        self.group_size, self.num_channels, self.impl = group_size, num_channels, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:             # [N, C, H, W] -> C + F
        return minibatch_std(x, self.group_size, self.num_channels, impl=self.impl)


def to_rgb(in_channels: int, img_channels: int, impl: str) -> EqualizedConv2d:
    """1x1 conv to image space, linear, gain 1 (PGGAN)."""
    return EqualizedConv2d(in_channels, img_channels, 1, gain=1.0, impl=impl)


def from_rgb(img_channels: int, out_channels: int, impl: str) -> EqualizedConv2d:
    """1x1 conv from image space + leaky ReLU."""
    return EqualizedConv2d(img_channels, out_channels, 1, act="lrelu", impl=impl)


def label_onehot(c: Optional[torch.Tensor], num_classes: int, device, dtype) -> torch.Tensor:
    """Class labels as int [N] or one-hot/soft [N, K] -> float [N, K], with a clear error."""
    if c is None:
        raise ValueError(f"this network is class-conditional ({num_classes} classes): pass "
                         f"labels c")
    if c.ndim == 1 and not c.is_floating_point():
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= num_classes):
            raise ValueError(f"class label out of range [0, {num_classes}): "
                             f"{int(c.min())}..{int(c.max())}")
        return F.one_hot(c.long(), num_classes).to(device=device, dtype=dtype)
    if c.ndim != 2 or c.shape[1] != num_classes:
        raise ValueError(f"labels must be int [N] or [N, {num_classes}] (got {tuple(c.shape)})")
    return c.to(device=device, dtype=dtype)
