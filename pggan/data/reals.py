"""Real images on the device: uint8 batch -> float [-1, 1] with the PGGAN fade-in blend.

The loader keeps images as uint8 on the CPU (4x less to copy than float32); the conversion and
the fade-in blend run on the device after the copy:

    x_faded = lerp(nearest_up(box_down_uint8(x)), x, alpha)       (pggan.ops.fade_in)

The low-pass term is formed in uint8 with the pyramid's own rounding (pggan/data/pyramid.py),
so at alpha = 0 what D sees after its 2x2 box down is bit for bit the previous stage's reals
when the dataset is a box pyramid (data_prep's default, and the synthetic source's).
"""
from __future__ import annotations

import torch

from pggan.ops import fade_in, upsample2d

from .pyramid import box_down_uint8


def prepare_reals(images_uint8: torch.Tensor, alpha: float, device, channels_last: bool = False,
                  impl: str = "auto", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [N, C, H, W] (CPU, any memory layout) -> `dtype` [N, C, H, W] in [-1, 1] on
    `device`, blended with its 2x-downsampled copy by `alpha` (1.0: unchanged)."""
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"prepare_reals: expected a uint8 [N, C, H, W] batch, got "
                         f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"prepare_reals: alpha must be in [0, 1] (got {alpha})")
    device = torch.device(device)
    non_blocking = device.type == "cuda" and images_uint8.is_pinned()
    x8 = images_uint8.to(device, non_blocking=non_blocking)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = to_unit_range(x8, dtype).contiguous(memory_format=fmt)
    if float(alpha) < 1.0:
        low = upsample2d(to_unit_range(box_down_uint8(x8), dtype), mode="nearest")
        x = fade_in(low.contiguous(memory_format=fmt), x, float(alpha), impl=impl)
    return x.contiguous(memory_format=fmt)


def to_unit_range(x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> `dtype` in [-1, 1]. x / 127.5 - 1 maps 0 -> -1 and 255 -> +1 exactly
    (x * (2/255) would give 1 + 1 ulp)."""
    return x_uint8.to(dtype).div_(127.5).sub_(1.0)
