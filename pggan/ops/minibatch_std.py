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
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_impl


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
    y = y.to(torch.promote_types(x.dtype, torch.float32))          # bf16 -> fp32 math
    y = y - y.mean(dim=1, keepdim=True)                            # deviation from group mean
    y = (y.square().mean(dim=1) + eps).sqrt()                      # [M, F, c, H, W]
    y = y.mean(dim=(2, 3, 4))                                      # [M, F]
    y = y.reshape(-1, num_channels, 1, 1).to(x.dtype)              # [M, F, 1, 1]
    y = y.repeat_interleave(g, dim=0).expand(n, num_channels, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)                                # [N, C + F, H, W]


def minibatch_std(x: torch.Tensor, group_size: int = 4, num_channels: int = 1,
                  eps: float = 1e-8, impl: str = "auto") -> torch.Tensor:
    if resolve_impl("minibatch_std", impl, x, has_triton=False) == "ref":
        return minibatch_std_ref(x, group_size, num_channels, eps)
    raise AssertionError("unreachable")
