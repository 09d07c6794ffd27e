"""webdataset streams over one resolution's shard set (training: resampled; metrics: epoch).

Training stream (infinite): every (rank, worker) draws shards with replacement
(wds.ResampledShards), expands the tars (tar_reader), shuffles in a buffer of encoded samples,
decodes to uint8 in the worker and assembles batches (mirroring while it writes them into the
worker's shared-memory slot, worker_pool.py). Batches are uint8 [B, C, res, res] in
channels_last memory layout (the decoders' HWC order; see decode.DecodedBatch). All randomness
is seeded from (seed, rank, worker, start_nimg, purpose), so starting again at the same
`start_nimg` reads the same stream: a resumed run continues a reproducible stream. Ranks and
workers differ only by their seeds, which is how a resampled stream is split across nodes and
workers.

Epoch stream (finite): each image exactly once over all ranks x workers. With at least as many
shards as (rank, worker) slots the shards are dealt out (split by node, then by worker);
with fewer, every slot reads every shard and keeps the images whose global index falls in its
slot (index % slots), so the split stays exact and balanced for small shard sets.

The pipelines are built inside each worker by a producer (`TrainBatches`, `EpochBatches`) that
is told its worker id and count, so no stage looks up a process-global worker identity.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import webdataset as wds

from .dataset_info import IMAGE_EXTS, DatasetError, DatasetInfo
from .decode import DecodedBatch, decode_native
from .seeds import derive_seed
from .tar_reader import expand_shards
from .worker_pool import batch_stream, without_indices


# Failed shard reads (damaged, truncated, mismatching dataset.json) a training worker skips with
# a warning before it stops the run naming the shard: a resampled stream draws a bad shard again
# and again, so a handful of skips already means the shard set needs fixing.
SHARD_ERROR_BUDGET = 10


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
    """Shard URLs -> samples (tar_reader.expand_shards) with an error handler; shards that do
    not match dataset.json's bytes / sha256 (`expected`, url -> (bytes, sha256)) count as
    failures (tar_reader says what is checked where)."""
    handler: ErrorBudget
    expected: Optional[Tuple[Tuple[str, int, str], ...]] = None

    def __call__(self, src):
        expected = {u: (n, h) for u, n, h in self.expected} if self.expected else None
        return expand_shards(src, self.handler, expected)


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
    """wds.shuffle with its own rng (seeded for this worker)."""
    bufsize: int
    seed: int

    def __call__(self, src):
        return wds.shuffle(self.bufsize, initial=min(self.bufsize, 100),
                           rng=random.Random(self.seed))(src)


@dataclass(frozen=True)
class SeededMirror:
    """Decides the left-right flip of each sample (probability 1/2); the flip itself is done
    while the batch is written. Adds a fourth element, the flag."""
    seed: Optional[int]                     # None: never flip

    def __call__(self, src):
        rng = random.Random(self.seed) if self.seed is not None else None
        for sample in src:
            yield sample + ((rng is not None and rng.random() < 0.5),)


@dataclass(frozen=True)
class CollateBatch:
    """[(image, label, index, flip)] -> DecodedBatch (written into its buffer later)."""
    labelled: bool
    with_index: bool = False

    def __call__(self, samples: list) -> DecodedBatch:
        return DecodedBatch([s[0] for s in samples], [s[3] for s in samples],
                            [s[1] for s in samples] if self.labelled else None,
                            [s[2] for s in samples] if self.with_index else None)


@dataclass(frozen=True)
class ShardSet:
    """What both pipelines read: one resolution's shard URLs and how to decode their images."""
    urls: Tuple[str, ...]
    res: int
    channels: int
    ext: str                # png | jpg | webp
    labelled: bool
    digests: Tuple[Tuple[str, int, str], ...] = ()     # (url, bytes, sha256) per shard

    @classmethod
    def of(cls, info: DatasetInfo, res: int, img_channels: Optional[int],
           num_shards: Optional[int] = None) -> "ShardSet":
        """The first `num_shards` (all by default) shards of `res`; the model's channel count
        must match the dataset's (None: take the dataset's)."""
        info.check_resolution(res)
        if img_channels is not None and img_channels != info.channels:
            raise DatasetError(f"{info.root}: the dataset has {info.channels} channel(s) but "
                               f"the model expects {img_channels}; set --set model.img_channels="
                               f"{info.channels} or prepare the data with --channels "
                               f"{img_channels}")
        urls = info.shard_urls(res)
        digests = tuple((u, s.num_bytes, s.sha256) for u, s in zip(urls, info.shards[res]))
        if num_shards is not None:
            urls, digests = urls[:num_shards], digests[:num_shards]
        return cls(tuple(urls), res, info.channels, IMAGE_EXTS[info.image_formats[res]],
                   info.num_classes > 0, digests)

    def decode(self):
        return wds.map(DecodeSample(self.res, self.channels, self.ext))


@dataclass(frozen=True)
class TrainBatches:
    """Producer of the resampled training pipeline for worker `worker` of `num_workers`."""
    shards: ShardSet
    batch: int
    seed: int
    rank: int
    start_nimg: int
    shuffle_buffer: int
    mirror: bool

    def __call__(self, worker: int, num_workers: int):
        def seed(purpose: str) -> int:
            return derive_seed(self.seed, self.rank, worker, self.start_nimg, purpose)
        shard_seed = seed("shards")
        stages = [wds.ResampledShards(list(self.shards.urls), worker_seed=lambda: shard_seed,
                                      deterministic=True),
                  ExpandShards(ErrorBudget(limit=SHARD_ERROR_BUDGET), self.shards.digests)]
        if self.shuffle_buffer > 1:
            stages.append(SeededShuffle(self.shuffle_buffer, seed("shuffle")))
        stages.append(self.shards.decode())
        stages.append(SeededMirror(seed("mirror") if self.mirror else None))
        stages.append(wds.batched(self.batch, collation_fn=CollateBatch(self.shards.labelled),
                                  partial=False))
        return iter(wds.DataPipeline(*stages))



def shard_train_stream(info: DatasetInfo, res: int, *, batch_per_gpu: int, seed: int, rank: int,
                       start_nimg: int, img_channels: Optional[int], mirror: bool,
                       shuffle_buffer: int, num_workers: int,
                       pin_memory: bool = False) -> Iterator:
    """Infinite iterator of (uint8 [B, C, res, res] channels_last, int64 [B] or None)."""
    shards = ShardSet.of(info, res, img_channels)
    producer = TrainBatches(shards, batch_per_gpu, seed, rank, start_nimg, shuffle_buffer, mirror)
    return without_indices(batch_stream(producer, num_workers, batch_per_gpu,
                                        (res, res, shards.channels), pin_memory=pin_memory))


@dataclass(frozen=True)
class EpochShards:
    """First stage of the epoch pipeline: this (rank, worker) slot's shards, in order."""
    urls: Tuple[str, ...]
    slot: int
    slots: int
    split_by_shard: bool

    def __call__(self):
        urls = self.urls[self.slot::self.slots] if self.split_by_shard else self.urls
        return iter([dict(url=u) for u in urls])


@dataclass(frozen=True)
class EpochSelect:
    """Keep images with global index < num_images and, when shards are shared, index % slots ==
    slot. The global index is the sample key data_prep wrote."""
    slot: int
    slots: int
    num_images: int
    split_by_shard: bool

    def __call__(self, src):
        for sample in src:
            index = int(sample["__key__"])
            if index >= self.num_images:
                continue
            if self.split_by_shard or index % self.slots == self.slot:
                yield sample


@dataclass(frozen=True)
class EpochBatches:
    """Producer of the epoch pipeline for worker `worker` of `num_workers` on rank `rank`."""
    shards: ShardSet
    batch: int
    rank: int
    world_size: int
    num_images: int

    def __call__(self, worker: int, num_workers: int):
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        split_by_shard = len(self.shards.urls) >= slots
        return iter(wds.DataPipeline(
            EpochShards(self.shards.urls, slot, slots, split_by_shard),
            ExpandShards(ErrorBudget(limit=0), self.shards.digests),
            EpochSelect(slot, slots, self.num_images, split_by_shard),
            self.shards.decode(),
            SeededMirror(None),
            wds.batched(self.batch, collation_fn=CollateBatch(self.shards.labelled, True),
                        partial=True),
        ))


def shard_epoch_stream(info: DatasetInfo, res: int, *, batch_size: int, rank: int,
                       world_size: int, img_channels: Optional[int], num_workers: int,
                       num_images: Optional[int] = None, with_index: bool = False) -> Iterator:
    """Finite iterator of (uint8 [<=B, C, res, res], int64 [<=B] or None): the first
    `num_images` images (all by default), each exactly once over ranks x workers, unmirrored.
    with_index=True adds a third element, the int64 [<=B] global indices."""
    limit = info.num_images if num_images is None else min(num_images, info.num_images)
    info.check_resolution(res)
    needed = sum(1 for s in info.shards[res] if s.first_index < limit)
    shards = ShardSet.of(info, res, img_channels, num_shards=needed)
    producer = EpochBatches(shards, batch_size, rank, world_size, limit)
    stream = batch_stream(producer, num_workers, batch_size, (res, res, shards.channels))
    return stream if with_index else without_indices(stream)
