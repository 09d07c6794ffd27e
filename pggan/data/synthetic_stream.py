"""Training and epoch streams of the built-in synthetic source (no dataset on disk).

Sample identity is a pure function of the global image position, so a 1-process and a 2-process
run see the same global batch and a resumed run sees exactly what the uninterrupted one would:
micro-step k covers global positions p = start_nimg + k * world_size * batch_per_gpu and rank r
takes positions [p + r * B, p + (r + 1) * B). The mirror flip of a position is a hash of
(seed, position) as well.

`top_res` (the run's max_res with data.synthetic_pyramid box, the default): every resolution is
rendered at top_res and box-averaged down (pggan/data/pyramid.py), so the reals of one stage
are exactly the 2x2 means of the next stage's, as a box-pyramid dataset's are. None: each
resolution is drawn directly (anti-aliased edges at that resolution).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from .order import mirror_flags, step_positions
from .pyramid import box_pyramid_uint8
from .synthetic import synthetic_images
from .worker_pool import batch_stream, without_indices

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]

# The mirror decision of a position is the shard stream's (order.mirror_flags).
synthetic_mirror_flags = mirror_flags


def synthetic_pyramid_images(positions: torch.Tensor, res: int, channels: int, seed: int,
                             top_res: Optional[int] = None) -> torch.Tensor:
    """Images at `positions` -> uint8 [N, channels, res, res]: rendered at top_res and
    box-averaged down to res when top_res > res, else rendered at res."""
    if top_res is None or top_res <= res:
        return synthetic_images(positions, res, channels, seed)
    return box_pyramid_uint8(synthetic_images(positions, top_res, channels, seed), [res])[res]


def synthetic_batch(positions: torch.Tensor, res: int, channels: int, seed: int,
                    mirror: bool, top_res: Optional[int] = None) -> torch.Tensor:
    """Images at global `positions` ([N] int64) -> uint8 [N, channels, res, res]."""
    images = synthetic_pyramid_images(positions, res, channels, seed, top_res)
    if mirror:
        flip = synthetic_mirror_flags(positions, seed)
        images[flip] = images[flip].flip(-1)
    return images


@dataclass
class RenderedBatch:
    """A rendered uint8 [n, C, H, W] batch waiting to be written into its buffer."""
    images: torch.Tensor
    labels = None
    indices = None

    @property
    def n(self) -> int:
        return self.images.shape[0]

    def write_into(self, out: np.ndarray) -> None:
        """out: uint8 [n, H, W, C] (a view)."""
        torch.from_numpy(out).copy_(self.images.permute(0, 2, 3, 1))


@dataclass(frozen=True)
class SyntheticSteps:
    """Producer of one rank's micro-steps: worker w of W renders k = w, w + W, ..., and the
    pool takes the workers in turn, so the stream is k = 0, 1, 2, ... whatever W is."""
    res: int
    batch_per_gpu: int
    seed: int
    rank: int
    world_size: int
    start_nimg: int
    img_channels: int
    mirror: bool
    top_res: Optional[int] = None

    def batch(self, k: int) -> torch.Tensor:
        """uint8 [B, C, res, res]: micro-step k of this rank."""
        positions = torch.from_numpy(step_positions(self.start_nimg, k, self.rank,
                                                    self.world_size, self.batch_per_gpu))
        return synthetic_batch(positions, self.res, self.img_channels, self.seed, self.mirror,
                               self.top_res)

    def __call__(self, worker: int, num_workers: int) -> Iterator[RenderedBatch]:
        k = worker
        while True:
            yield RenderedBatch(self.batch(k))
            k += num_workers



def synthetic_train_stream(res: int, *, batch_per_gpu: int, seed: int, rank: int,
                           world_size: int, start_nimg: int, img_channels: int, mirror: bool,
                           num_workers: int = 0, pin_memory: bool = False,
                           top_res: Optional[int] = None) -> Iterator[Batch]:
    """Infinite stream of (uint8 [B, C, res, res], None) for rank `rank` of `world_size`,
    rendered in `num_workers` worker processes (0: in this process)."""
    steps = SyntheticSteps(res, batch_per_gpu, seed, rank, world_size, start_nimg,
                           img_channels, mirror, top_res)
    return without_indices(batch_stream(steps, num_workers, batch_per_gpu,
                                        (res, res, img_channels), pin_memory=pin_memory))


def synthetic_epoch_stream(res: int, *, num_images: int, batch_size: int, seed: int, rank: int,
                           world_size: int, img_channels: int,
                           with_index: bool = False,
                           top_res: Optional[int] = None) -> Iterator[Batch]:
    """Positions 0 .. num_images-1, each exactly once over all ranks (rank r: p % world == r),
    unmirrored, in batches of up to `batch_size`; with_index adds the positions."""
    positions = torch.arange(rank, num_images, world_size, dtype=torch.int64)
    for i in range(0, positions.numel(), batch_size):
        pos = positions[i:i + batch_size]
        images = synthetic_pyramid_images(pos, res, img_channels, seed, top_res)
        yield (images, None, pos) if with_index else (images, None)
