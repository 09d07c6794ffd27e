"""Multi-scale sliced Wasserstein distance (SWD) of Karras et al. 2018 (PGGAN, sec. 5 and app. D).

No pretrained network: the distance compares local 7x7 image patches of two image sets at every
level of a Laplacian pyramid.

1. Laplacian pyramid of each image (pixel values 0..255 as float): blur with the 5x5 binomial
   kernel ([1, 4, 6, 4, 1] outer product / 256, mirrored borders), keep every second pixel;
   level L = image_L - up(down(image_L)), where `up` inserts zeros and blurs with 4x the
   kernel. Levels go from the image resolution down to 16 px; the 16 px level is the low-pass
   image itself. Images smaller than 16 px are nearest-upsampled to 16 px first (the metric is
   then defined from the 4x4 phase on; such values compare only among themselves).
2. 128 random 7x7 neighbourhoods per image per level -> descriptors of C * 49 values.
   Positions are a pure function of (seed, level, global image index), so the descriptor set
   does not depend on how images were split over ranks or batches.
3. Each descriptor set (one level of one image set) is normalised per colour channel by its
   own mean and standard deviation (over all descriptors and the 7x7 positions).
4. 4 repeats x 128 random unit directions (seeded by (seed, level)); project both sets, sort
   each projection, mean absolute difference of the sorted values (the 1-D Wasserstein-1
   distance of equally sized sets), averaged over the 512 directions, x 1e3.
   Reported per level and as the average over levels.

Memory: descriptors stay on the host as float32, levels x N x 128 x C x 49 x 4 bytes per set
(N = 10,000 RGB images at 1024 px: 7 levels, 5.3 GB per set). Per level they are moved to the
device and projected in blocks of at most `max_block_elems` values per set, so device memory
holds one level plus one block of projections.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from kornia.filters import filter2d

from pggan.data.seeds import derive_seed
from pggan.data.synthetic import hash_uniform

from .dist import all_reduce_sum, gather_rows

NHOOD_SIZE = 7              # neighbourhood edge in pixels
NHOODS_PER_IMAGE = 128      # descriptors per image per level
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RES = 16                # coarsest pyramid level
SWD_SCALE = 1e3             # PGGAN reports SWD x 1e3
MAX_BLOCK_ELEMS = 1 << 25   # projections per set and block: 128 MiB of float32


def level_resolutions(res: int) -> List[int]:
    """Pyramid levels of images at `res` px, finest first: [res, res/2, ..., 16]."""
    top = max(int(res), MIN_RES)
    if top & (top - 1):
        raise ValueError(f"swd: resolution must be a power of two (got {res})")
    return [top >> i for i in range(int(math.log2(top // MIN_RES)) + 1)]


def binomial_kernel(device=None, dtype=torch.float32) -> torch.Tensor:
    """[1, 5, 5]: ([1, 4, 6, 4, 1] outer [1, 4, 6, 4, 1]) / 256, sums to 1."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=dtype, device=device)
    return (k[:, None] * k[None, :] / 256.0)[None]


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H/2, W/2]: binomial blur (mirrored borders), every second pixel."""
    return filter2d(x, binomial_kernel(x.device, x.dtype), border_type="reflect")[..., ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W]: zeros between the pixels, blur with 4x the kernel
    (each output pixel receives a quarter of the kernel's weight from the non-zero pixels)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return filter2d(up, 4.0 * binomial_kernel(x.device, x.dtype), border_type="reflect")


def laplacian_pyramid(images: torch.Tensor) -> List[torch.Tensor]:
    """float [N, C, R, R] (R a power of two >= 16) -> levels finest first; the last (16 px) is
    the low-pass image, the others are band-pass details. Sum of up-projected levels == image."""
    levels = [images]
    while levels[-1].shape[-1] > MIN_RES:
        low = pyr_down(levels[-1])
        levels[-1] = levels[-1] - pyr_up(low)
        levels.append(low)
    return levels


def pyramid_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, R, R] -> float32 0..255, nearest-upsampled to 16 px when R < 16."""
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"swd: expected uint8 [N, C, H, W] images, got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    h, w = images_uint8.shape[-2:]
    if h != w:
        raise ValueError(f"swd: images must be square (got {h}x{w})")
    level_resolutions(h)            # validates the size
    x = images_uint8.float()
    if h < MIN_RES:
        x = F.interpolate(x, scale_factor=MIN_RES // h, mode="nearest")
    return x


def _position_seed(seed: int, level_res: int) -> int:
    # hash_uniform adds seed * 7919 in int64: keep the seed to 32 bits so that cannot overflow.
    return derive_seed("swd-neighbourhoods", seed, level_res) & 0xFFFFFFFF


def neighbourhood_positions(indices: torch.Tensor, size: int, seed: int, level_res: int,
                            count: int = NHOODS_PER_IMAGE) -> torch.Tensor:
    """Top-left corners of `count` neighbourhoods per image: int64 [N, count, 2] (y, x), each
    uniform in 0 .. size - 7, a pure function of (seed, level_res, global image index)."""
    u = hash_uniform(_position_seed(seed, level_res), indices.cpu(), 2 * count)   # [N, 2*count]
    span = size - NHOOD_SIZE + 1
    pos = (u * span).floor().clamp_(max=span - 1).to(torch.int64)
    return torch.stack([pos[:, :count], pos[:, count:]], dim=-1)


def extract_neighbourhoods(level: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """level [N, C, H, W], positions [N, K, 2] -> descriptors [N * K, C * 49] (channel-major)."""
    n, c = level.shape[:2]
    k = positions.shape[1]
    pos = positions.to(level.device)
    ar = torch.arange(NHOOD_SIZE, device=level.device)
    ys = pos[..., 0, None, None] + ar[None, None, :, None]          # [N, K, 7, 1]
    xs = pos[..., 1, None, None] + ar[None, None, None, :]          # [N, K, 1, 7]
    ns = torch.arange(n, device=level.device)[:, None, None, None]  # [N, 1, 1, 1]
    patches = level.permute(0, 2, 3, 1)[ns, ys, xs]                 # [N, K, 7, 7, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(n * k, c * NHOOD_SIZE * NHOOD_SIZE)


def image_descriptors(images_uint8: torch.Tensor, indices: torch.Tensor, seed: int,
                      count: int = NHOODS_PER_IMAGE) -> Dict[int, torch.Tensor]:
    """uint8 [N, C, R, R] with global indices [N] -> {level_res: float32 [N * count, C * 49]}
    on the images' device (rows of image i are rows i*count .. (i+1)*count - 1)."""
    levels = laplacian_pyramid(pyramid_input(images_uint8))
    out = {}
    for level in levels:
        res = level.shape[-1]
        out[res] = extract_neighbourhoods(level, neighbourhood_positions(indices, res, seed, res,
                                                                        count))
    return out


def normalize_descriptors(desc: torch.Tensor, channels: int) -> torch.Tensor:
    """[M, C * 49] -> the same, each channel minus its mean, divided by its std (both over all
    M descriptors and 49 positions; population std). A channel with zero spread (e.g. a
    detail level of flat images) becomes all zeros rather than NaN."""
    m = desc.shape[0]
    d = desc.reshape(m, channels, -1)                                # [M, C, 49]
    # Statistics accumulate in float64 (M is up to millions); the data stays float32.
    mean = d.mean(dim=(0, 2), keepdim=True, dtype=torch.float64).to(d.dtype)
    centered = d - mean
    std = centered.square().mean(dim=(0, 2), keepdim=True, dtype=torch.float64).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std)).to(d.dtype)
    return (centered / std).reshape(m, -1)


def swd_directions(dim: int, seed: int, level_res: int) -> torch.Tensor:
    """[dim, 4 * 128] float32 random unit directions (normal samples, normalised), a pure
    function of (seed, level_res)."""
    gen = torch.Generator().manual_seed(derive_seed("swd-directions", seed, level_res))
    dirs = torch.randn(dim, DIR_REPEATS * DIRS_PER_REPEAT, generator=gen)
    return dirs / dirs.norm(dim=0, keepdim=True)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor,
                       max_block_elems: int = MAX_BLOCK_ELEMS,
                       dir_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a, b [M, D] (same M), dirs [D, K] -> float64 [K]: per direction, mean |sort(a @ dir) -
    sort(b @ dir)|. Directions are processed in blocks of <= max_block_elems / M; with
    `dir_mask` ([K] bool) only those directions are computed (the others are 0)."""
    if a.shape != b.shape:
        raise ValueError(f"swd: descriptor sets differ in shape {tuple(a.shape)} vs "
                         f"{tuple(b.shape)}; both image sets need the same number of images")
    m, k = a.shape[0], dirs.shape[1]
    out = torch.zeros(k, dtype=torch.float64, device=a.device)
    block = max(1, min(k, max_block_elems // max(m, 1)))
    dirs = dirs.to(device=a.device, dtype=a.dtype)
    for start in range(0, k, block):
        sel = torch.arange(start, min(start + block, k), device=a.device)
        if dir_mask is not None:
            sel = sel[dir_mask.to(a.device)[sel]]
            if sel.numel() == 0:
                continue
        # Projections as [k, M] rows: sorting contiguous rows is ~4x faster on the CPU than
        # sorting the columns of [M, k] (measured on 2 cores, M = 128k, k = 512).
        d = dirs[:, sel].T.contiguous()                                     # [k, D]
        pa = torch.sort(d @ a.T, dim=1).values                              # [k, M]
        pb = torch.sort(d @ b.T, dim=1).values
        out[sel] = (pa - pb).abs().sum(dim=1, dtype=torch.float64) / m
    return out


def swd_per_level(real: Dict[int, torch.Tensor], fake: Dict[int, torch.Tensor], channels: int,
                  seed: int, device: torch.device, max_block_elems: int = MAX_BLOCK_ELEMS,
                  rank: int = 0, world_size: int = 1) -> Dict[int, float]:
    """Full descriptor sets per level (every rank holds all of them) -> {level_res: SWD x 1e3}.
    With world_size > 1 each rank projects its share of the directions and the per-direction
    distances are summed over ranks, so every rank returns the same values."""
    result = {}
    for res in sorted(real, reverse=True):
        a = normalize_descriptors(real[res].to(device), channels)
        b = normalize_descriptors(fake[res].to(device), channels)
        dirs = swd_directions(a.shape[1], seed, res)
        k = dirs.shape[1]
        block = max(1, min(k, max_block_elems // max(a.shape[0], 1)))
        mask = (torch.arange(k) // block) % world_size == rank
        per_dir = sliced_wasserstein(a, b, dirs, max_block_elems, dir_mask=mask)
        per_dir = all_reduce_sum(per_dir)
        result[res] = float(per_dir.mean()) * SWD_SCALE
        del a, b
    return result


class SWDAccumulator:
    """Collects the descriptors of this rank's real and generated images; `compute` gathers
    them over ranks and returns {"value": average over levels, "per_level": {res: value}}."""

    def __init__(self, seed: int, device: torch.device, max_block_elems: int = MAX_BLOCK_ELEMS):
        self.seed, self.device, self.max_block_elems = seed, torch.device(device), max_block_elems
        self.rows: dict = {"real": {}, "fake": {}}      # kind -> res -> [descriptor blocks]
        self.index: dict = {"real": [], "fake": []}     # kind -> [global index blocks]
        self.channels: Optional[int] = None

    def add(self, kind: str, images_uint8: torch.Tensor, indices: torch.Tensor) -> None:
        if self.channels is None:
            self.channels = images_uint8.shape[1]
        elif images_uint8.shape[1] != self.channels:
            raise ValueError(f"swd: images have {images_uint8.shape[1]} channels, earlier ones "
                             f"{self.channels}")
        for res, d in image_descriptors(images_uint8, indices, self.seed).items():
            self.rows[kind].setdefault(res, []).append(d.cpu())
        self.index[kind].append(indices.cpu().to(torch.int64))

    def _gathered(self, kind: str) -> Dict[int, torch.Tensor]:
        idx = torch.cat(self.index[kind]) if self.index[kind] else torch.zeros(0, dtype=torch.int64)
        out = {}
        for res, blocks in self.rows[kind].items():
            rows = torch.cat(blocks)
            row_idx = idx.repeat_interleave(rows.shape[0] // max(idx.numel(), 1))
            out[res], _ = gather_rows(rows, row_idx, out_device=torch.device("cpu"))
        return out

    def compute(self, rank: int = 0, world_size: int = 1) -> dict:
        if self.channels is None:
            raise ValueError("swd: no images were added on this rank")
        real, fake = self._gathered("real"), self._gathered("fake")
        if not real or set(real) != set(fake):
            raise ValueError("swd: real and generated images must both be given, at one "
                             "resolution")
        per_level = swd_per_level(real, fake, self.channels, self.seed, self.device,
                                  self.max_block_elems, rank, world_size)
        return {"value": sum(per_level.values()) / len(per_level),
                "per_level": {str(r): v for r, v in per_level.items()}}
