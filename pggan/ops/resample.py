"""2x up/downsampling: nearest / 2x2 box (PGGAN) and FIR-filtered (StyleGAN, [1,3,3,1]).

FIR filtering uses kornia.filters.filter2d on an explicitly padded input, with the padding of
StyleGAN2's upfirdn2d (up: zero insertion, pad (k+1)//2, (k-2)//2; down: pad (k-1)//2, (k-2)//2),
so even-length filters sit where that implementation puts them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from kornia.filters import filter2d


@functools.lru_cache(maxsize=32)
def _fir_kernel_cpu(taps: tuple) -> torch.Tensor:
    f = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(f, f)
    return k / k.sum()                                             # [k, k], sums to 1


# (taps, device, dtype) -> the kernel on that device: copied there once, not at every call (a
# host -> device copy per resampling op would be a host sync each on CUDA). Callers only read
# it. Kept only for plain tensors: one made under a fake / tracing mode must not be reused.
_FIR_ON_DEVICE: dict = {}


def fir_kernel(taps: Sequence[float], device, dtype) -> torch.Tensor:
    key = (tuple(float(t) for t in taps), torch.device(device), dtype)
    k = _FIR_ON_DEVICE.get(key)
    if k is None:
        k = _fir_kernel_cpu(key[0]).to(device=key[1], dtype=dtype)
        if type(k) is torch.Tensor and len(_FIR_ON_DEVICE) < 64:
            _FIR_ON_DEVICE[key] = k
    return k


def _filter(x: torch.Tensor, k: torch.Tensor, pad: tuple) -> torch.Tensor:
    x = F.pad(x, pad)                                              # (left, right, top, bottom)
    return filter2d(x, k[None], border_type="constant", padding="valid")


def blur2d(x: torch.Tensor, taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Same-size FIR blur (zero padding), e.g. before a strided conv."""
    k = fir_kernel(taps, x.device, x.dtype)
    n = k.shape[0]
    p0, p1 = (n - 1) // 2 + (n - 1) % 2, (n - 1) // 2
    return _filter(x, k, (p0, p1, p0, p1))


def upsample2d(x: torch.Tensor, factor: int = 2, mode: str = "nearest",
               taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H*factor, W*factor]."""
    if mode == "nearest":
        # F.interpolate keeps channels_last, repeat_interleave returned NCHW; both copy exactly.
        return F.interpolate(x, scale_factor=float(factor), mode="nearest")
    if mode != "fir":
        raise ValueError(f"upsample2d: mode must be 'nearest' or 'fir' (got {mode!r})")
    n_, c, h, w = x.shape
    # The zero-stuffed image keeps x's layout (new_zeros alone would make NHWC inputs NCHW).
    fmt = torch.channels_last if x.ndim == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    z = torch.empty(n_, c, h * factor, w * factor, dtype=x.dtype, device=x.device,
                    memory_format=fmt).zero_()
    z[:, :, ::factor, ::factor] = x                                # zero insertion
    k = fir_kernel(taps, x.device, x.dtype) * (factor ** 2)        # keep DC gain 1
    n = k.shape[0]
    p = n - factor
    return _filter(z, k, ((p + 1) // 2 + factor - 1, p // 2, (p + 1) // 2 + factor - 1, p // 2))


def downsample2d(x: torch.Tensor, factor: int = 2, mode: str = "box",
                 taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H/factor, W/factor]."""
    if mode == "box":
        return F.avg_pool2d(x, factor)
    if mode != "fir":
        raise ValueError(f"downsample2d: mode must be 'box' or 'fir' (got {mode!r})")
    k = fir_kernel(taps, x.device, x.dtype)
    n = k.shape[0]
    p = n - factor
    # One strided depthwise conv: filters only the pixels that are kept (1/factor^2 of the
    # work of filtering all and slicing) and keeps x's layout (a strided slice drops NHWC).
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    w = k[None, None].repeat(x.shape[1], 1, 1, 1)                  # [C, 1, k, k]; filter2d
    return F.conv2d(x, w, stride=factor, groups=x.shape[1])        # correlates, as conv2d
