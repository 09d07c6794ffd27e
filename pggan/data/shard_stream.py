"""webdataset streams over one resolution's shard set (training: by position; metrics: epoch).

Training stream (infinite): the image at global position p is a pure function of (seed, p)
(order.py: a permutation per epoch, micro-step k of rank r at positions start_nimg +
k * world_size * B + r * B + [0, B), worker w of W making k = w, w + W, ...). Local shards are
memory-mapped and read by index: each worker scans a shard's tar headers once (offsets only, no
image bytes) and then takes the images of its positions straight from the mapping. Remote shards
(http(s), `pipe:`), which can only be read front to back, come in blocks of
`data.interleave_shards` shards per epoch: a worker reads the shards of the block its next
position lies in once, keeps the images of its own positions in that block (its share of the
block's encoded bytes) and drops each after use. The left-right mirror of a position is a hash
of (seed, position) as well. Decoding to uint8 and mirroring happen in the worker, while the
batch is written into the worker's shared-memory slot (worker_pool.py); batches are uint8
[B, C, res, res] in channels_last memory layout (the decoders' HWC order; see
decode.DecodedBatch). So nothing needs to reopen the stream at a checkpoint, and a run resumed
at any cur_nimg, on any number of processes with the same global batch and any number of
workers, reads exactly the images an uninterrupted run reads.

A damaged or unreachable shard stops the run with a one-line error naming it (a remote read is
tried SHARD_READ_ATTEMPTS times first): skipping it would change which image every later
position shows.

Epoch stream (finite): each image exactly once over all ranks x workers. With at least as many
shards as (rank, worker) slots the shards are dealt out (split by node, then by worker);
with fewer, every slot reads every shard and keeps the images whose global index falls in its
slot (index % slots), so the split stays exact and balanced for small shard sets.

The pipelines are built inside each worker by a producer (`PositionBatches`, `EpochBatches`)
that is told its worker id and count, so no stage looks up a process-global worker identity.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import webdataset as wds

from .dataset_info import IMAGE_EXTS, DatasetError, DatasetInfo
from .decode import DecodedBatch, decode_native
from .order import EpochOrder, mirror_flags, spread_indices, step_positions
from .tar_reader import MappedShard, ShardReadError, _local_path, expand_shards, tar_members
from .worker_pool import batch_stream, without_indices


# Times a training worker reads a remote shard (http(s), pipe:) before the run stops naming it:
# a network read can fail once and succeed again; a damaged shard fails every time.
SHARD_READ_ATTEMPTS = 3


@dataclass
class ErrorBudget:
    """wds handler: warn and go on for up to `limit` failures, then raise as a one-line
    DatasetError naming the shard. limit=0: every failure raises (the streams are exact)."""
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
    """wds sample dict -> (uint8 [res, res, C] decoder order, label or -1, global index, mirror
    it), in the worker. The mirror decision is the sample's "__flip__" (training), else False."""
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
        return (img, (int(cls) if cls is not None else -1), int(sample["__key__"]),
                bool(sample.get("__flip__", False)))


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
    sizes: Tuple[int, ...] = ()         # images per shard (shard s: the indices after s-1's)

    @classmethod
    def of(cls, info: DatasetInfo, res: int, img_channels: Optional[int]) -> "ShardSet":
        """The shards of `res`; the model's channel count must match the dataset's (None: take
        the dataset's)."""
        info.check_resolution(res)
        if img_channels is not None and img_channels != info.channels:
            raise DatasetError(f"{info.root}: the dataset has {info.channels} channel(s) but "
                               f"the model expects {img_channels}; set --set model.img_channels="
                               f"{info.channels} or prepare the data with --channels "
                               f"{img_channels}")
        urls = info.shard_urls(res)
        digests = tuple((u, s.num_bytes, s.sha256) for u, s in zip(urls, info.shards[res]))
        sizes = tuple(s.num_images for s in info.shards[res])
        return cls(tuple(urls), res, info.channels, IMAGE_EXTS[info.image_formats[res]],
                   info.num_classes > 0, digests, sizes)

    def decode(self):
        return wds.map(DecodeSample(self.res, self.channels, self.ext))


def _read_error(exn: Exception, url: str) -> DatasetError:
    """A failed shard read as the one-line DatasetError the trainer prints (ErrorBudget's)."""
    if not exn.args or exn.args[-1] != url:
        exn.args = exn.args + (url,)
    try:
        ErrorBudget(limit=0)(exn)
    except DatasetError as err:
        return err
    raise AssertionError("unreachable")                 # pragma: no cover


class MappedImages:
    """Random access to the images of local shards: image index -> wds sample dict, its bytes
    a view of the memory-mapped shard (no copy for members of 64 KiB or more).

    A shard is mapped and indexed on first use: one pass over its tar headers records each
    image member's (offset, size) in bytes and parses its label, touching no image bytes;
    [images] int64 arrays, about 24 bytes per image. Its size is checked against dataset.json
    whenever it is mapped (tar_reader.py). At most MAX_MAPPED shards stay mapped (each mapping
    holds a file descriptor); the least recently used is unmapped and mapped again when
    needed (tens of microseconds, against milliseconds of decoding at 256-1024 px)."""

    MAX_MAPPED = 128

    def __init__(self, shards: "ShardSet", order: EpochOrder):
        self.shards, self.order = shards, order
        self.index: Dict[int, tuple] = {}           # shard -> (offsets, sizes, labels) [n]
        self.mapped: "OrderedDict[int, MappedShard]" = OrderedDict()

    def _map(self, s: int) -> MappedShard:
        mapped = self.mapped.get(s)
        if mapped is not None:
            self.mapped.move_to_end(s)
            return mapped
        url = self.shards.urls[s]
        try:
            mapped = MappedShard(_local_path(url), sequential=False)
            if self.shards.digests and len(mapped.view) != self.shards.digests[s][1]:
                raise ShardReadError(f"shard is {len(mapped.view)} bytes but dataset.json "
                                     f"records {self.shards.digests[s][1]} (truncated or "
                                     f"replaced)", url)
        except Exception as exn:                # noqa: BLE001 (reported as one line)
            raise _read_error(exn, url) from exn
        if len(self.mapped) >= self.MAX_MAPPED:
            self.mapped.popitem(last=False)[1].close()
        self.mapped[s] = mapped
        return mapped

    def _open(self, s: int) -> tuple:
        url = self.shards.urls[s]
        first, n = int(self.order.shard_first[s]), int(self.shards.sizes[s])
        mapped = self._map(s)
        try:
            offsets = np.full(n, -1, dtype=np.int64)
            sizes = np.zeros(n, dtype=np.int64)
            labels = np.full(n, -1, dtype=np.int64)
            for name, (offset, size) in tar_members(mapped, url, spans=True):
                slash = name.rfind("/") + 1
                key, _, ext = name[slash:].partition(".")
                if ext != self.shards.ext and ext != "cls":
                    continue
                local = int(key) - first if key.isdigit() else -1
                if not 0 <= local < n:
                    raise ShardReadError(f"member {name} is not one of images {first}.."
                                         f"{first + n - 1} that dataset.json places here", url)
                if ext == "cls":
                    labels[local] = int(mapped.member(offset, size))
                else:
                    offsets[local], sizes[local] = offset, size
            missing = np.flatnonzero(offsets < 0)
            if missing.size:
                raise ShardReadError(f"image {first + int(missing[0])} is missing", url)
        except DatasetError:
            raise
        except Exception as exn:                # noqa: BLE001 (reported as one line)
            raise _read_error(exn, url) from exn
        got = self.index[s] = (offsets, sizes, labels)
        return got

    def samples(self, images: np.ndarray) -> list:
        out = []
        for image, s in zip(images.tolist(), self.order.shard_of(images).tolist()):
            entry = self.index.get(s) or self._open(s)
            local = image - int(self.order.shard_first[s])
            data = self._map(s).member(int(entry[0][local]), int(entry[1][local]))
            sample = {"__key__": image, "__url__": self.shards.urls[s], self.shards.ext: data}
            if self.shards.labelled:
                sample["cls"] = int(entry[2][local])
            out.append(sample)
        return out


class BlockImages:
    """The images of remote shards, read a block at a time (order.py): when a reader reaches a
    position in a block it has not read, it reads the block's shards front to back (each once,
    hashed against dataset.json while it streams, tar_reader.py) and keeps the samples of its
    own positions from there to the block's end; each is dropped when it is used."""

    def __init__(self, shards: "ShardSet", order: EpochOrder, steps: "WorkerSteps"):
        self.shards, self.order, self.steps = shards, order, steps
        self.held: Dict[int, dict] = {}             # image index -> encoded sample
        self.loaded_end = -1                        # global position the held block ends at

    def _read_shard(self, s: int, wanted: set) -> Dict[int, dict]:
        url = self.shards.urls[s]
        expected = {u: (n, h) for u, n, h in self.shards.digests} if self.shards.digests \
            else None
        for attempt in range(1, SHARD_READ_ATTEMPTS + 1):
            failure = []
            got = {int(smp["__key__"]): smp
                   for smp in expand_shards([{"url": url}], lambda e: failure.append(e),
                                            expected)
                   if int(smp["__key__"]) in wanted}
            if not failure:
                return got
            if attempt < SHARD_READ_ATTEMPTS:
                warnings.warn(f"data stream: reading {url} failed ({failure[0]!r}); trying "
                              f"again ({SHARD_READ_ATTEMPTS - attempt} more)", RuntimeWarning,
                              stacklevel=2)
        raise _read_error(failure[0], url)

    def _load(self, position: int) -> None:
        end = self.order.block_span(position)[1]
        mine = self.steps.positions_between(position, end)
        wanted = self.order.images(mine)
        by_shard = self.order.shard_of(wanted)
        for s in np.unique(by_shard).tolist():
            want = set(wanted[by_shard == s].tolist())
            got = self._read_shard(s, want)
            if len(got) != len(want):
                missing = min(want - set(got))
                raise DatasetError(f"{self.shards.urls[s]}: image {missing} that dataset.json "
                                   f"places in this shard is not in it; run data_prep again")
            self.held.update(got)
        self.loaded_end = end

    def samples_at(self, positions: np.ndarray, images: np.ndarray) -> list:
        out = []
        for p, image in zip(positions.tolist(), images.tolist()):
            if p >= self.loaded_end:
                self._load(p)
            out.append(self.held.pop(image))
        return out


@dataclass(frozen=True)
class WorkerSteps:
    """The positions one (rank, worker) reads: micro-steps k = worker, worker + workers, ...
    (order.step_positions)."""
    start_nimg: int
    rank: int
    world_size: int
    batch: int
    worker: int
    workers: int

    def positions(self, k: int) -> np.ndarray:
        return step_positions(self.start_nimg, k, self.rank, self.world_size, self.batch)

    def positions_between(self, lo: int, hi: int) -> np.ndarray:
        """This reader's positions p with lo <= p < hi, in order."""
        stride = self.world_size * self.batch
        k = max(0, (lo - self.start_nimg - self.rank * self.batch) // stride)
        k += (self.worker - k) % self.workers
        parts = []
        while True:
            pos = self.positions(k)
            if pos[0] >= hi:
                break
            parts.append(pos[(pos >= lo) & (pos < hi)])
            k += self.workers
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class StepSamples:
    """First stage of the training pipeline: the encoded samples of each micro-step of one
    worker, in order, each marked with its mirror decision ("__flip__")."""
    shards: "ShardSet"
    order: EpochOrder
    steps: WorkerSteps
    seed: int
    mirror: bool

    def __call__(self):
        random_access = self.order.interleave == 0
        source = MappedImages(self.shards, self.order) if random_access else \
            BlockImages(self.shards, self.order, self.steps)
        k = self.steps.worker
        while True:
            positions = self.steps.positions(k)                 # [B] int64
            images = self.order.images(positions)
            samples = source.samples(images) if random_access else \
                source.samples_at(positions, images)
            flips = mirror_flags(torch.from_numpy(positions), self.seed).tolist() \
                if self.mirror else [False] * len(samples)
            for sample, flip in zip(samples, flips):
                sample["__flip__"] = flip
                yield sample
            k += self.steps.workers


@dataclass(frozen=True)
class PositionBatches:
    """Producer of the training pipeline for worker `worker` of `num_workers` on rank `rank`:
    read (by index or by block), decode, batch; the pool takes the workers in turn, so the
    stream is micro-step 0, 1, 2, ... whatever the number of workers."""
    shards: ShardSet
    order: EpochOrder
    batch: int
    seed: int
    rank: int
    world_size: int
    start_nimg: int
    mirror: bool

    def __call__(self, worker: int, num_workers: int):
        steps = WorkerSteps(self.start_nimg, self.rank, self.world_size, self.batch, worker,
                            num_workers)
        return iter(wds.DataPipeline(
            StepSamples(self.shards, self.order, steps, self.seed, self.mirror),
            self.shards.decode(),
            wds.batched(self.batch, collation_fn=CollateBatch(self.shards.labelled, True),
                        partial=False)))


def _random_access(urls: Tuple[str, ...]) -> bool:
    """Whether the shards can be memory-mapped (local files on a filesystem that maps them);
    else they are read front to back (http(s), pipe:, a FUSE mount without mmap)."""
    path = _local_path(urls[0])
    if path is None:
        return False
    try:
        MappedShard(path, sequential=False).close()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return True                     # the reader names the shard when it opens it
    except (OSError, ValueError):
        return False
    return True


def shard_train_stream(info: DatasetInfo, res: int, *, batch_per_gpu: int, seed: int, rank: int,
                       world_size: int, start_nimg: int, img_channels: Optional[int],
                       mirror: bool, interleave_shards: int, num_workers: int,
                       pin_memory: bool = False, with_index: bool = False) -> Iterator:
    """Infinite iterator of (uint8 [B, C, res, res] channels_last, int64 [B] or None): the
    images of rank `rank`'s positions (module docstring). with_index=True adds a third
    element, the int64 [B] global image indices."""
    shards = ShardSet.of(info, res, img_channels)
    interleave = 0 if _random_access(shards.urls) else interleave_shards
    order = EpochOrder(seed, shards.sizes, interleave)
    producer = PositionBatches(shards, order, batch_per_gpu, seed, rank, world_size, start_nimg,
                               mirror)
    stream = batch_stream(producer, num_workers, batch_per_gpu, (res, res, shards.channels),
                          pin_memory=pin_memory)
    return stream if with_index else without_indices(stream)


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
    """Keep the images whose global index is in `keep` (None: all) and, when shards are shared,
    index % slots == slot. The global index is the sample key data_prep wrote."""
    slot: int
    slots: int
    keep: Optional[frozenset]
    split_by_shard: bool

    def __call__(self, src):
        for sample in src:
            index = int(sample["__key__"])
            if self.keep is not None and index not in self.keep:
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
    keep: Optional[frozenset]           # global indices of the images read (None: all)

    def __call__(self, worker: int, num_workers: int):
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        split_by_shard = len(self.shards.urls) >= slots
        return iter(wds.DataPipeline(
            EpochShards(self.shards.urls, slot, slots, split_by_shard),
            ExpandShards(ErrorBudget(limit=0), self.shards.digests),
            EpochSelect(slot, slots, self.keep, split_by_shard),
            self.shards.decode(),
            wds.batched(self.batch, collation_fn=CollateBatch(self.shards.labelled, True),
                        partial=True),
        ))


def shard_epoch_stream(info: DatasetInfo, res: int, *, batch_size: int, rank: int,
                       world_size: int, img_channels: Optional[int], num_workers: int,
                       num_images: Optional[int] = None, with_index: bool = False) -> Iterator:
    """Finite iterator of (uint8 [<=B, C, res, res], int64 [<=B] or None): `num_images` images
    (all by default) spread evenly over the dataset (`spread_indices`), each exactly once over
    ranks x workers, unmirrored. with_index=True adds a third element, the int64 [<=B] global
    indices."""
    info.check_resolution(res)
    keep = None if num_images is None or num_images >= info.num_images else \
        frozenset(spread_indices(num_images, info.num_images).tolist())
    shards = ShardSet.of(info, res, img_channels)
    producer = EpochBatches(shards, batch_size, rank, world_size, keep)
    stream = batch_stream(producer, num_workers, batch_size, (res, res, shards.channels))
    return stream if with_index else without_indices(stream)
