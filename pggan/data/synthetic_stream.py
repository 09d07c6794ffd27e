"""Training and epoch streams of the built-in synthetic source (no dataset on disk).

Sample identity is a pure function of the global image position, so a 1-process and a 2-process
run see the same global batch and a resumed run sees exactly what the uninterrupted one would:
micro-step k covers global positions p = start_nimg + k * world_size * batch_per_gpu and rank r
takes positions [p + r * B, p + (r + 1) * B). The mirror flip of a position is a hash of
(seed, position) as well.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from .synthetic import hash_uniform, synthetic_images
from .workers import ignore_stop_signals

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]

# hash_uniform(seed, i, count)[:, k] does not depend on `count`; synthetic_images reads the first
# few parameters of each position, the mirror decision reads this one, far past them.
_MIRROR_PARAM = 63


def synthetic_mirror_flags(positions: torch.Tensor, seed: int) -> torch.Tensor:
    """[N] int64 positions -> [N] bool: flip this image left-right (probability 1/2)."""
    return hash_uniform(seed, positions, _MIRROR_PARAM + 1)[:, _MIRROR_PARAM] < 0.5


def synthetic_batch(positions: torch.Tensor, res: int, channels: int, seed: int,
                    mirror: bool) -> torch.Tensor:
    """Images at global `positions` ([N] int64) -> uint8 [N, channels, res, res]."""
    images = synthetic_images(positions, res, channels, seed)
    if mirror:
        flip = synthetic_mirror_flags(positions, seed)
        images[flip] = images[flip].flip(-1)
    return images


class SyntheticSteps(torch.utils.data.IterableDataset):
    """Micro-steps k = worker, worker + W, ... of one rank; a DataLoader with W workers asks
    them in turn, so it returns k = 0, 1, 2, ... in order whatever W is."""

    def __init__(self, res: int, batch_per_gpu: int, seed: int, rank: int, world_size: int,
                 start_nimg: int, img_channels: int, mirror: bool):
        super().__init__()
        self.res, self.batch_per_gpu, self.seed = res, batch_per_gpu, seed
        self.rank, self.world_size, self.start_nimg = rank, world_size, start_nimg
        self.img_channels, self.mirror = img_channels, mirror

    def batch(self, k: int) -> torch.Tensor:
        """uint8 [B, C, res, res]: micro-step k of this rank."""
        step_nimg = self.world_size * self.batch_per_gpu      # images per micro-step, all ranks
        first = self.start_nimg + k * step_nimg + self.rank * self.batch_per_gpu
        positions = first + torch.arange(self.batch_per_gpu, dtype=torch.int64)
        return synthetic_batch(positions, self.res, self.img_channels, self.seed, self.mirror)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        k, stride = (info.id, info.num_workers) if info is not None else (0, 1)
        while True:
            yield self.batch(k), None
            k += stride


def synthetic_train_stream(res: int, *, batch_per_gpu: int, seed: int, rank: int,
                           world_size: int, start_nimg: int, img_channels: int, mirror: bool,
                           num_workers: int = 0) -> Iterator[Batch]:
    """Infinite stream of (uint8 [B, C, res, res], None) for rank `rank` of `world_size`,
    rendered in `num_workers` DataLoader workers (0: in this process)."""
    steps = SyntheticSteps(res, batch_per_gpu, seed, rank, world_size, start_nimg,
                           img_channels, mirror)
    if num_workers == 0:
        return iter(steps)
    # Explicit generator: the DataLoader must not draw from the global torch RNG.
    loader = torch.utils.data.DataLoader(steps, batch_size=None, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed),
                                         worker_init_fn=ignore_stop_signals,
                                         prefetch_factor=2)
    return iter(loader)


def synthetic_epoch_stream(res: int, *, num_images: int, batch_size: int, seed: int, rank: int,
                           world_size: int, img_channels: int,
                           with_index: bool = False) -> Iterator[Batch]:
    """Positions 0 .. num_images-1, each exactly once over all ranks (rank r: p % world == r),
    unmirrored, in batches of up to `batch_size`; with_index adds the positions."""
    positions = torch.arange(rank, num_images, world_size, dtype=torch.int64)
    for i in range(0, positions.numel(), batch_size):
        pos = positions[i:i + batch_size]
        images = synthetic_images(pos, res, img_channels, seed)
        yield (images, None, pos) if with_index else (images, None)
