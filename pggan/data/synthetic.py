"""Built-in procedural images: no download, any resolution, a pure function of (seed, index).

Each image is a two-colour linear gradient with three soft-edged discs, drawn in continuous
coordinates, so the same index rendered at 64 and at 8 px shows the same picture. Parameters come
from a counter-based integer hash of (seed, index, parameter), so a sample does not depend on
which batch, rank or worker asked for it: a 1-process and a 2-process run see the same global
batch, and a resumed run sees exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import torch

NUM_DISCS = 3
_PARAMS_PER_IMAGE = 6 + 1 + NUM_DISCS * 6      # gradient colours, angle, discs (x, y, r, rgb)
_MASK64 = (1 << 64) - 1


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    def c(v: int) -> int:                      # 64-bit constant as a signed int64 value
        v &= _MASK64
        return v - (1 << 64) if v >= (1 << 63) else v
    z = z + c(0x9E3779B97F4A7C15)
    z = (z ^ ((z >> 30) & c((1 << 34) - 1))) * c(0xBF58476D1CE4E5B9)
    z = (z ^ ((z >> 27) & c((1 << 37) - 1))) * c(0x94D049BB133111EB)
    return z ^ ((z >> 31) & c((1 << 33) - 1))


def hash_uniform(seed: int, index: torch.Tensor, count: int, first: int = 0) -> torch.Tensor:
    """[N] int64 indices -> [N, count] float64 uniforms in [0, 1), pure in (seed, index):
    parameters first .. first + count - 1 of each index (each one independent of the others)."""
    idx = index.to(torch.int64).reshape(-1, 1)
    k = torch.arange(first, first + count, dtype=torch.int64).reshape(1, -1)
    z = _mix64(_mix64(idx * 1_000_003 + int(seed) * 7_919) + k)
    return ((z >> 11) & ((1 << 53) - 1)).to(torch.float64) / float(1 << 53)


def synthetic_images(indices, res: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Render images `indices` ([N] ints) at `res` px -> uint8 [N, channels, res, res]."""
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    n = idx.shape[0]
    u = hash_uniform(seed, idx, _PARAMS_PER_IMAGE).float()          # [N, P]
    pos = (torch.arange(res, dtype=torch.float32) + 0.5) / res      # pixel centres in (0, 1)
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")                # [H, W]
    c0, c1 = u[:, 0:3], u[:, 3:6]                                   # [N, 3]
    ang = u[:, 6] * 6.2831853
    t = (xx[None] * torch.cos(ang)[:, None, None] + yy[None] * torch.sin(ang)[:, None, None])
    t = (t - t.amin(dim=(1, 2), keepdim=True)) / (
        t.amax(dim=(1, 2), keepdim=True) - t.amin(dim=(1, 2), keepdim=True) + 1e-6)
    img = c0[:, :, None, None] * (1 - t[:, None]) + c1[:, :, None, None] * t[:, None]  # [N,3,H,W]
    for d in range(NUM_DISCS):
        p = u[:, 7 + 6 * d: 13 + 6 * d]
        cx, cy = 0.15 + 0.7 * p[:, 0], 0.15 + 0.7 * p[:, 1]
        r = 0.08 + 0.22 * p[:, 2]
        dist = ((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2).sqrt()
        cover = ((r[:, None, None] - dist) * res + 0.5).clamp(0, 1)  # 1-px anti-aliased edge
        img = img * (1 - cover[:, None]) + p[:, 3:6, None, None] * cover[:, None]
    if channels == 1:
        img = (img * torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)).sum(1, True)
    elif channels != 3:
        raise ValueError(f"synthetic_images: channels must be 1 or 3 (got {channels})")
    assert img.shape == (n, channels, res, res)
    return (img * 255 + 0.5).clamp(0, 255).to(torch.uint8)
