"""The real-image pyramid: each resolution the exact 2x2 mean of the next, in uint8.

PGGAN fades a new resolution in by showing D lerp(nearest_up(box_down(x_2R)), x_2R, alpha).
At alpha = 0 D's first step (2x2 box down, then the previous stage's fromRGB) then sees
box_down(x_2R). That equals the previous stage's reals x_R exactly only if x_R *is*
box_down(x_2R), in the same integer rounding. So both sides use this one function:

* data_prep (`--filter box`, the default; `area` too) builds every resolution below max_res
  as box_down_uint8 of the one above;
* the built-in synthetic source renders at the top resolution and cascades down the same way;
* prepare_reals (pggan/data/reals.py) forms the fade's low-pass term with it.

Rounding: (a + b + c + d + 2) // 4, i.e. the mean rounded half up, in integers: no float
summation order can change it on any device.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch


def box_down_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W] (H, W even) -> uint8 [..., H/2, W/2], the 2x2 means rounded half up."""
    if x.dtype != torch.uint8 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"box_down_uint8: expected uint8 [..., H, W] with even H, W, got "
                         f"{x.dtype} {tuple(x.shape)}")
    s = x.to(torch.int16)
    s = s[..., 0::2, :] + s[..., 1::2, :]                          # [..., H/2, W]
    s = s[..., :, 0::2] + s[..., :, 1::2]                          # [..., H/2, W/2]
    return torch.div(s + 2, 4, rounding_mode="floor").to(torch.uint8)


def box_pyramid_uint8(top: torch.Tensor, resolutions: Iterable[int]) -> Dict[int, torch.Tensor]:
    """uint8 [..., R, R] -> {res: uint8 [..., res, res]} for the requested res <= R, each the
    box_down_uint8 of the level above (R itself: `top` unchanged)."""
    wanted = sorted(set(int(r) for r in resolutions), reverse=True)
    R = top.shape[-1]
    if wanted and (wanted[0] > R or any(R % r or (R // r) & (R // r - 1) for r in wanted)):
        raise ValueError(f"box_pyramid_uint8: resolutions {wanted} must be powers-of-two "
                         f"fractions of {R}")
    out, cur = {}, top
    for res in wanted:
        while cur.shape[-1] > res:
            cur = box_down_uint8(cur)
        out[res] = cur
    return out
