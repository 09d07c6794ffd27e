"""webdataset streams over one resolution's shard set (training: resampled; metrics: epoch).

Training stream (infinite): every (rank, worker) draws shards with replacement
(wds.ResampledShards), expands the tars (tar_reader), shuffles in a buffer of encoded samples,
decodes to uint8 in the worker and assembles batches (mirroring while it copies). Batches are
uint8 [B, C, res, res] in channels_last memory layout (the decoders' HWC order; see
decode.collate_images). All randomness is seeded from
(seed, rank, worker, start_nimg, purpose), so starting again at the same `start_nimg` reads the
same stream: a resumed run continues a reproducible stream. Ranks and workers differ only by
their seeds, which is how a resampled stream is split across nodes and workers.

Epoch stream (finite): each image exactly once over all ranks x workers. With at least as many
shards as (rank, worker) slots the shards are dealt out (split by node, then by worker);
with fewer, every slot reads every shard and keeps the images whose global index falls in its
slot (index % slots), so the split stays exact and balanced for small shard sets.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import webdataset as wds

from .dataset_info import IMAGE_EXTS, DatasetError, DatasetInfo
from .decode import collate_images, decode_native
from .seeds import derive_seed
from .tar_reader import expand_shards
from .workers import ignore_stop_signals


def worker_slot() -> Tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) in-process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass(frozen=True)
class WorkerSeed:
    """Callable seed of the calling worker (evaluated inside it, so each worker differs)."""
    seed: int
    rank: int
    start_nimg: int
    purpose: str

    def __call__(self) -> int:
        return derive_seed(self.seed, self.rank, worker_slot()[0], self.start_nimg, self.purpose)


@dataclass
class ErrorBudget:
    """wds handler: warn and go on for up to `limit` failures (a flaky network read in a
    resampled stream), then raise. limit=0: every failure raises (epoch mode must be exact)."""
    limit: int
    count: int = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        if self.count > self.limit:
            if isinstance(exn, DatasetError):
                raise exn
            # webdataset appends the shard URL to the exception's args.
            url = exn.args[-1] if len(exn.args) > 1 and isinstance(exn.args[-1], str) else "?"
            what = exn.args[0] if exn.args else type(exn).__name__
            raise DatasetError(f"{url}: cannot read shard ({type(exn).__name__}: {what}); the "
                               f"shard set is damaged or unreachable: check the path/URL or "
                               f"run data_prep again") from exn
        warnings.warn(f"data stream: skipped a shard read after error ({exn!r}); "
                      f"{self.limit - self.count} more allowed", RuntimeWarning, stacklevel=2)
        return True


@dataclass(frozen=True)
class ExpandShards:
    """Shard URLs -> samples (tar_reader.expand_shards) with an error handler."""
    handler: ErrorBudget

    def __call__(self, src):
        return expand_shards(src, self.handler)


@dataclass(frozen=True)
class DecodeSample:
    """wds sample dict -> (uint8 [res, res, C] decoder order, label or -1, global index), in
    the worker."""
    res: int
    channels: int
    ext: str                # png | jpg | webp

    def __call__(self, sample: dict):
        data = sample.get(self.ext)
        if data is None:
            raise DatasetError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no "
                               f".{self.ext} image; the shard set is damaged, run data_prep again")
        img = decode_native(data, self.channels)
        if img.shape[0] != self.res or img.shape[1] != self.res:
            raise DatasetError(f"{sample.get('__url__')}: sample {sample.get('__key__')} is "
                               f"{img.shape[1]}x{img.shape[0]}, expected {self.res}x{self.res}")
        cls = sample.get("cls")
        return img, (int(cls) if cls is not None else -1), int(sample["__key__"])


@dataclass(frozen=True)
class SeededShuffle:
    """wds.shuffle with a per-worker rng created when the worker starts iterating."""
    bufsize: int
    seed: WorkerSeed

    def __call__(self, src):
        return wds.shuffle(self.bufsize, initial=min(self.bufsize, 100),
                           rng=random.Random(self.seed()))(src)


@dataclass(frozen=True)
class SeededMirror:
    """Decides the left-right flip of each sample (probability 1/2); the flip itself is done
    while the batch is assembled. Adds a fourth element, the flag."""
    seed: Optional[WorkerSeed]              # None: never flip

    def __call__(self, src):
        rng = random.Random(self.seed()) if self.seed is not None else None
        for sample in src:
            yield sample + ((rng is not None and rng.random() < 0.5),)


@dataclass(frozen=True)
class CollateBatch:
    """[(image, label, index, flip)] -> (uint8 [N, C, H, W] channels_last, int64 [N] labels or
    None[, int64 [N] global indices])."""
    labelled: bool
    with_index: bool = False

    def __call__(self, samples: list):
        in_worker = torch.utils.data.get_worker_info() is not None
        images = collate_images([s[0] for s in samples], [s[3] for s in samples],
                                shared=in_worker)
        labels = (torch.tensor([s[1] for s in samples], dtype=torch.int64)
                  if self.labelled else None)
        if self.with_index:
            return images, labels, torch.tensor([s[2] for s in samples], dtype=torch.int64)
        return images, labels


def _loader(pipeline, num_workers: int, seed: int, pin_memory: bool):
    # An explicit generator: the DataLoader must not draw its worker base seed from the global
    # torch RNG, which would shift the training loop's noise.
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed),
                                       pin_memory=pin_memory,
                                       worker_init_fn=ignore_stop_signals,
                                       prefetch_factor=4 if num_workers else None)


def _check_channels(info: DatasetInfo, img_channels: Optional[int]) -> int:
    if img_channels is None:
        return info.channels
    if img_channels != info.channels:
        raise DatasetError(f"{info.root}: the dataset has {info.channels} channel(s) but the "
                           f"model expects {img_channels}; set --set model.img_channels="
                           f"{info.channels} or prepare the data with --channels {img_channels}")
    return img_channels


def shard_train_stream(info: DatasetInfo, res: int, *, batch_per_gpu: int, seed: int, rank: int,
                       start_nimg: int, img_channels: Optional[int], mirror: bool,
                       shuffle_buffer: int, num_workers: int,
                       pin_memory: bool = False) -> Iterator:
    """Infinite iterator of (uint8 [B, C, res, res] channels_last, int64 [B] or None)."""
    channels = _check_channels(info, img_channels)
    urls = info.shard_urls(res)
    ext = IMAGE_EXTS[info.image_formats[res]]
    stages = [
        wds.ResampledShards(urls, worker_seed=WorkerSeed(seed, rank, start_nimg, "shards"),
                            deterministic=True),
        ExpandShards(ErrorBudget(limit=10)),
    ]
    if shuffle_buffer > 1:
        stages.append(SeededShuffle(shuffle_buffer, WorkerSeed(seed, rank, start_nimg, "shuffle")))
    stages.append(wds.map(DecodeSample(res, channels, ext)))
    stages.append(SeededMirror(WorkerSeed(seed, rank, start_nimg, "mirror") if mirror else None))
    stages.append(wds.batched(batch_per_gpu, collation_fn=CollateBatch(info.num_classes > 0),
                              partial=False))
    loader = _loader(wds.DataPipeline(*stages), num_workers,
                     derive_seed(seed, rank, start_nimg, "loader"), pin_memory)
    return iter(loader)


@dataclass(frozen=True)
class EpochShards:
    """First stage of the epoch pipeline: this (rank, worker) slot's shards, in order."""
    urls: Tuple[str, ...]
    rank: int
    world_size: int
    split_by_shard: bool

    def __call__(self):
        worker, num_workers = worker_slot()
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        urls = self.urls[slot::slots] if self.split_by_shard else self.urls
        return iter([dict(url=u) for u in urls])


@dataclass(frozen=True)
class EpochSelect:
    """Keep images with global index < num_images and, when shards are shared, index % slots ==
    slot. The global index is the sample key data_prep wrote."""
    rank: int
    world_size: int
    num_images: int
    split_by_shard: bool

    def __call__(self, src):
        worker, num_workers = worker_slot()
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        for sample in src:
            index = int(sample["__key__"])
            if index >= self.num_images:
                continue
            if self.split_by_shard or index % slots == slot:
                yield sample


def shard_epoch_stream(info: DatasetInfo, res: int, *, batch_size: int, rank: int,
                       world_size: int, img_channels: Optional[int], num_workers: int,
                       num_images: Optional[int] = None, with_index: bool = False) -> Iterator:
    """Finite iterator of (uint8 [<=B, C, res, res], int64 [<=B] or None): the first
    `num_images` images (all by default), each exactly once over ranks x workers, unmirrored.
    with_index=True adds a third element, the int64 [<=B] global indices."""
    channels = _check_channels(info, img_channels)
    limit = info.num_images if num_images is None else min(num_images, info.num_images)
    info.check_resolution(res)
    needed = [s for s in info.shards[res] if s.first_index < limit]
    slots = world_size * max(num_workers, 1)
    split_by_shard = len(needed) >= slots
    urls = tuple(info.shard_urls(res)[: len(needed)])
    ext = IMAGE_EXTS[info.image_formats[res]]
    pipeline = wds.DataPipeline(
        EpochShards(urls, rank, world_size, split_by_shard),
        ExpandShards(ErrorBudget(limit=0)),
        EpochSelect(rank, world_size, limit, split_by_shard),
        wds.map(DecodeSample(res, channels, ext)),
        SeededMirror(None),
        wds.batched(batch_size, collation_fn=CollateBatch(info.num_classes > 0, with_index),
                    partial=True),
    )
    return iter(_loader(pipeline, num_workers, derive_seed(rank, "epoch"), pin_memory=False))
