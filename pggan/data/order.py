"""Which image the training stream shows at global image position p: a pure function of
(seed, p) and the shard set, as edm2's InfiniteSampler(start_idx=cur_nimg) is for a
random-access dataset.

Layout of positions over processes (shared with the synthetic source): micro-step k of rank r
reads positions start_nimg + k * world_size * B + r * B + [0, B), and worker w of W produces the
micro-steps k = w, w + W, ... (the worker pool takes the workers in turn). So 1 and N processes
read the same global batch, the number of loader workers does not change it, and a stream
opened at any `start_nimg` continues exactly where an uninterrupted one would be: nothing is
reopened at a checkpoint, and a resume needs nothing but cur_nimg.

Epochs: position p lies in epoch e = p // N (N images) at offset p % N, and each epoch is a
permutation of the N images (without replacement: every image once per epoch), drawn from
(seed, e). Two orders, chosen by how the shards can be read:

  random access (local, memory-mapped shards): one permutation of all N images per epoch,
      the best mixing there is (every batch a uniform draw without replacement).
  blocks (remote shards: http(s), pipe:, read front to back): the shards in a permuted order
      per epoch, taken `interleave` at a time; the images of each such block of shards are
      permuted together (several shards interleaved, a permutation within each shard). A reader
      fetches a block's shards once and keeps the images it serves; a position maps to
      (block, shard, offset), so a resume re-reads at most the current block's shards and
      skips nothing.

The permutations are numpy's PCG64 Generator.permutation seeded by derive_seed(seed, ...);
they are computed where they are used (each loader worker), never stored in a checkpoint.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from .seeds import derive_seed
from .synthetic import hash_uniform

# hash_uniform(seed, i, count)[:, k] does not depend on `count`; the synthetic source reads the
# first few parameters of each position, the mirror decision reads this one, far past them.
_MIRROR_PARAM = 63


def step_positions(start_nimg: int, k: int, rank: int, world_size: int,
                   batch_per_gpu: int) -> np.ndarray:
    """int64 [B]: the global positions of micro-step k of rank `rank`."""
    first = start_nimg + (k * world_size + rank) * batch_per_gpu
    return np.arange(first, first + batch_per_gpu, dtype=np.int64)


def mirror_flags(positions: torch.Tensor, seed: int) -> torch.Tensor:
    """[N] int64 positions -> [N] bool: flip the image at this position left-right
    (probability 1/2), a pure function of (seed, position)."""
    return hash_uniform(seed, positions, 1, first=_MIRROR_PARAM)[:, 0] < 0.5


def spread_indices(n: int, total: int) -> np.ndarray:
    """int64 [n]: the metrics' real images, floor(k * total / n) for k < n, spread evenly over
    the dataset. The first n would be a biased sample of data written in class, folder or glyph
    order (the emoji source's glyph order puts most of its people in five skin tones after
    image 2,000 of 3,926: its first 2,000 are mostly objects, symbols and flags)."""
    n = min(int(n), int(total))
    return (np.arange(n, dtype=np.int64) * int(total)) // max(n, 1)


def _permutation(n: int, *seed_parts) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(derive_seed(*seed_parts)))
    return rng.permutation(n).astype(np.int64)


class EpochOrder:
    """Global position -> global image index (the sample key data_prep wrote).

    `shard_sizes`: images per shard in index order (shard s holds the indices after those of
    shards 0 .. s-1). `interleave` 0: random access (one permutation of all images per epoch);
    >= 1: blocks of that many shards (module docstring). Picklable; each process keeps its own
    small cache of the epochs it is in."""

    def __init__(self, seed: int, shard_sizes: Sequence[int], interleave: int = 0):
        self.seed, self.interleave = int(seed), int(interleave)
        self.shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.shard_first = np.concatenate([[0], np.cumsum(self.shard_sizes)[:-1]])
        self.num_images = int(self.shard_sizes.sum())
        if self.num_images < 1:
            raise ValueError("EpochOrder: the shard set holds no images")
        self._epochs: Dict[int, tuple] = {}         # epoch -> its layout (at most 2 kept)
        self._blocks: Dict[Tuple[int, int], np.ndarray] = {}

    def __getstate__(self):
        return {"seed": self.seed, "shard_sizes": self.shard_sizes.tolist(),
                "interleave": self.interleave}

    def __setstate__(self, state):
        self.__init__(state["seed"], state["shard_sizes"], state["interleave"])

    # ---- one epoch's layout ----------------------------------------------------------------

    def _epoch(self, e: int) -> tuple:
        """Random access: (permutation [N],). Blocks: (block starts [nb + 1] as offsets in
        the epoch, shards of each block (list of arrays))."""
        got = self._epochs.get(e)
        if got is None:
            if self.interleave == 0:
                got = (_permutation(self.num_images, self.seed, "epoch", e),)
            else:
                order = _permutation(len(self.shard_sizes), self.seed, "shard-order", e)
                blocks = [order[i:i + self.interleave]
                          for i in range(0, len(order), self.interleave)]
                sizes = [int(self.shard_sizes[b].sum()) for b in blocks]
                got = (np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), blocks)
            if len(self._epochs) >= 2:              # a batch spans at most two epochs
                self._epochs.pop(min(self._epochs))
                self._blocks = {k: v for k, v in self._blocks.items() if k[0] in self._epochs}
            self._epochs[e] = got
        return got

    def _block_images(self, e: int, b: int) -> np.ndarray:
        """Blocks: the image indices of block b of epoch e, in their permuted order."""
        key = (e, b)
        got = self._blocks.get(key)
        if got is None:
            shards = self._epoch(e)[1][b]
            images = np.concatenate([self.shard_first[s] + np.arange(self.shard_sizes[s])
                                     for s in shards])
            got = images[_permutation(images.shape[0], self.seed, "block", e, b)]
            self._blocks[key] = got
        return got

    # ---- queries ---------------------------------------------------------------------------

    def images(self, positions: np.ndarray) -> np.ndarray:
        """int64 [n] positions (>= 0) -> int64 [n] image indices."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty_like(positions)
        epochs = positions // self.num_images
        for e in np.unique(epochs):
            sel = epochs == e
            offsets = positions[sel] - int(e) * self.num_images
            if self.interleave == 0:
                out[sel] = self._epoch(int(e))[0][offsets]
                continue
            starts = self._epoch(int(e))[0]
            blocks = np.searchsorted(starts, offsets, side="right") - 1
            res = np.empty_like(offsets)
            for b in np.unique(blocks):
                bsel = blocks == b
                res[bsel] = self._block_images(int(e), int(b))[offsets[bsel] - starts[b]]
            out[sel] = res
        return out

    def block_span(self, position: int) -> Tuple[int, int]:
        """Blocks: [first, end) global positions of the block that holds `position`."""
        e, offset = divmod(int(position), self.num_images)
        starts = self._epoch(e)[0]
        b = int(np.searchsorted(starts, offset, side="right")) - 1
        base = e * self.num_images
        return base + int(starts[b]), base + int(starts[b + 1])

    def block_shards(self, position: int) -> np.ndarray:
        """Blocks: the shard indices (in index order) of the block that holds `position`."""
        e, offset = divmod(int(position), self.num_images)
        starts, blocks = self._epoch(e)
        b = int(np.searchsorted(starts, offset, side="right")) - 1
        return np.sort(blocks[b])

    def shard_of(self, images: np.ndarray) -> np.ndarray:
        """int64 [n] image indices -> int64 [n] shard indices."""
        return np.searchsorted(self.shard_first, images, side="right") - 1

