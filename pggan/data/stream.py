"""Entry points of the data stream: one call per resolution.

`make_train_stream` (infinite, mirrored; the image at each global position a pure function
of (seed, position), order.py) feeds the training loop; the loop calls it again with the new
resolution when the schedule grows, and never at a checkpoint. `make_epoch_stream` (finite, each image
once over all ranks and workers) feeds the metrics. `data_cfg.path` None means the built-in
synthetic source; otherwise a directory, http(s) URL base or `pipe:` command holding the
dataset.json that data_prep wrote.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping, Optional

from pggan.config import AUTO_MAX_WORKERS, NUM_WORKERS_AUTO, DataConfig

from .dataset_info import DatasetError, load_dataset_info
from .shard_stream import shard_epoch_stream, shard_train_stream
from .synthetic_stream import synthetic_epoch_stream, synthetic_train_stream


# The synthetic box pyramid starts at most here: rendering 16 images costs 1.4 / 8.4 / 46 / 155 ms
# at 32 / 64 / 128 / 256 px (one core, 2-core x86_64 VM, 2026-12-01), and a 4x4 step of a
# max-res-1024 run must not pay for 1024 px images. Above it each resolution is drawn directly.
SYNTHETIC_PYRAMID_MAX_RES = 64


def synthetic_top(data_cfg: DataConfig, top_res: Optional[int]) -> Optional[int]:
    """The synthetic source's pyramid top: `top_res` (at most SYNTHETIC_PYRAMID_MAX_RES) with
    data.synthetic_pyramid box; None (each resolution drawn directly) with render."""
    if data_cfg.synthetic_pyramid != "box" or top_res is None:
        return None
    return min(int(top_res), SYNTHETIC_PYRAMID_MAX_RES)


# data.num_workers auto is capped at config.AUTO_MAX_WORKERS loader processes per training
# process: each worker keeps its own decoded batch slots, and with remote shards each worker
# reads every shard of a block that holds one of its positions, so the bytes read grow with
# the workers (README "Data"). The cap bounds that on large nodes; it is not a measured
# optimum (the machine of benchmarks/RESULTS.md has 2 cores).


def resolve_num_workers(value, env: Mapping[str, str] = os.environ) -> int:
    """data.num_workers -> the loader processes this training process starts. An int stands.
    auto: this process's share of the cores it may run on (os.sched_getaffinity divided by
    the node's processes, LOCAL_WORLD_SIZE / SLURM_NTASKS_PER_NODE), less one core for the
    training process itself (its main thread queues the GPU's work or runs torch's CPU
    threads), at least 1 and at most AUTO_MAX_WORKERS."""
    if value != NUM_WORKERS_AUTO:
        return int(value)
    from pggan.training.cpu_threads import available_cores, local_processes
    share = available_cores() // max(1, local_processes(env))
    return max(1, min(AUTO_MAX_WORKERS, share - 1))


def _resolved(data_cfg: DataConfig) -> DataConfig:
    return data_cfg if isinstance(data_cfg.num_workers, int) else \
        dataclasses.replace(data_cfg, num_workers=resolve_num_workers(data_cfg.num_workers))


def _check_common(res: int, batch: int, rank: int, world_size: int) -> None:
    if res < 4 or res & (res - 1):
        raise DatasetError(f"data stream: resolution must be a power of two >= 4 (got {res})")
    if batch < 1:
        raise DatasetError(f"data stream: batch size must be >= 1 (got {batch})")
    if not 0 <= rank < world_size:
        raise DatasetError(f"data stream: rank {rank} is outside world size {world_size}")


def make_train_stream(data_cfg: DataConfig, res: int, *, batch_per_gpu: int, seed: int,
                      rank: int, world_size: int, start_nimg: int, img_channels: int,
                      pin_memory: bool = False, top_res: Optional[int] = None,
                      with_index: bool = False) -> Iterator:
    """Infinite iterator of (images uint8 [B, C, res, res] CPU, labels int64 [B] or None).

    Micro-step k holds the images of global positions start_nimg + k * world_size * B +
    rank * B + [0, B), so 1 and N processes see the same global batch and a stream opened at
    any start_nimg continues an uninterrupted one exactly. Synthetic source: image p rendered
    from (seed, p). Shards: a permutation of the dataset per epoch (shard_stream.py).
    `top_res`: the run's max_res; the synthetic source's box pyramid starts there (with
    data.synthetic_pyramid box). Shard sets carry their pyramid already. with_index=True
    (shards only) adds a third element, the int64 [B] global image indices.
    """
    _check_common(res, batch_per_gpu, rank, world_size)
    data_cfg = _resolved(data_cfg)
    if start_nimg < 0:
        raise DatasetError(f"data stream: start_nimg must be >= 0 (got {start_nimg})")
    if data_cfg.path is None:
        if with_index:
            raise DatasetError("make_train_stream: with_index needs a shard dataset (the "
                               "synthetic source's index is the position)")
        return synthetic_train_stream(res, batch_per_gpu=batch_per_gpu, seed=seed, rank=rank,
                                      world_size=world_size, start_nimg=start_nimg,
                                      img_channels=img_channels, mirror=data_cfg.mirror,
                                      num_workers=data_cfg.num_workers, pin_memory=pin_memory,
                                      top_res=synthetic_top(data_cfg, top_res))
    info = load_dataset_info(data_cfg.path)
    return shard_train_stream(info, res, batch_per_gpu=batch_per_gpu, seed=seed, rank=rank,
                              world_size=world_size, start_nimg=start_nimg,
                              img_channels=img_channels, mirror=data_cfg.mirror,
                              interleave_shards=data_cfg.interleave_shards,
                              num_workers=data_cfg.num_workers, pin_memory=pin_memory,
                              with_index=with_index)


def make_epoch_stream(data_cfg: DataConfig, res: int, *, batch_size: int, rank: int,
                      world_size: int, img_channels: Optional[int] = None,
                      num_images: Optional[int] = None, seed: int = 0,
                      with_index: bool = False, top_res: Optional[int] = None) -> Iterator:
    """Finite iterator of (images uint8 [<=B, C, res, res], labels int64 [<=B] or None): each of
    `num_images` images spread evenly over the dataset (pggan.data.order.spread_indices; all
    when None) exactly once over all ranks x workers, unmirrored (metrics' real statistics).
    Per-rank counts may differ by the remainder.

    The synthetic source has no end: `num_images` is required there (positions 0 ..
    num_images-1 rendered with `seed`). with_index=True appends the int64 [<=B] global indices.
    """
    _check_common(res, batch_size, rank, world_size)
    data_cfg = _resolved(data_cfg)
    if data_cfg.path is None:
        if num_images is None:
            raise DatasetError("make_epoch_stream: the synthetic source needs num_images")
        return synthetic_epoch_stream(res, num_images=num_images, batch_size=batch_size,
                                      seed=seed, rank=rank, world_size=world_size,
                                      img_channels=3 if img_channels is None else img_channels,
                                      with_index=with_index,
                                      top_res=synthetic_top(data_cfg, top_res))
    info = load_dataset_info(data_cfg.path)
    return shard_epoch_stream(info, res, batch_size=batch_size, rank=rank,
                              world_size=world_size, img_channels=img_channels,
                              num_workers=data_cfg.num_workers, num_images=num_images,
                              with_index=with_index)
