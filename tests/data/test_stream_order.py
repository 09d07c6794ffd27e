"""The training stream as a pure function of the image position (pggan/data/order.py): every
image once per epoch over ranks x workers, a resumed or re-partitioned stream reading exactly
the uninterrupted one's images in the same global order (local shards by index, remote shards
by block), the mirror flip of a position, and batch mixing on a class-sorted folder measured
with a chi-square test against the dataset's class frequencies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from pggan.config import DataConfig
from pggan.data import make_train_stream
from pggan.data.order import EpochOrder, mirror_flags

from .sample_files import read_shard_set, run_prep, smooth_image

NUM_CLASSES = 10


def sources(path: Path) -> dict:
    """The same shard set read as local shards (memory-mapped, by index) and as remote shards
    (`pipe:cat`, front to back in blocks of 2 shards)."""
    return {"local": DataConfig(path=str(path), num_workers=2),
            "remote": DataConfig(path=f"pipe:cat {path}/{{}}", num_workers=2,
                                 interleave_shards=2)}


def read_positions(data: DataConfig, res: int, *, batch: int, world: int, start: int,
                   steps: int, seed: int = 0) -> dict:
    """{global position: (image index, label, uint8 [C, res, res])} of `steps` micro-steps of
    every rank of a `world`-process run opened at `start`."""
    out = {}
    for rank in range(world):
        stream = make_train_stream(data, res, batch_per_gpu=batch, seed=seed, rank=rank,
                                   world_size=world, start_nimg=start, img_channels=3,
                                   with_index=True)
        for k in range(steps):
            images, labels, index = next(stream)
            first = start + (k * world + rank) * batch
            for j in range(batch):
                out[first + j] = (int(index[j]), int(labels[j]), images[j])
    return out


@pytest.mark.parametrize("source", ["local", "remote"])
@pytest.mark.parametrize("world", [1, 2])
def test_every_image_exactly_once_per_epoch(labelled_dataset, source, world):
    """36 images in 8 shards; 2 ranks x 2 workers (or 1 rank x 2 workers) read 3 epochs, an
    epoch boundary falling inside a micro-step (36 is not a multiple of 8)."""
    got = read_positions(sources(labelled_dataset)[source], 8, batch=4, world=world,
                         start=0, steps=-(-108 // (4 * world)))
    assert sorted(got)[:108] == list(range(108))
    written = read_shard_set(labelled_dataset, 8)
    epochs = [[got[p][0] for p in range(36 * e, 36 * (e + 1))] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(36))                 # once each, none missing
    assert len({tuple(o) for o in epochs}) == 3                 # a new permutation per epoch
    for p, (i, label, _) in got.items():
        assert label == written[i][1]


@pytest.mark.parametrize("source", ["local", "remote"])
def test_resume_on_2_processes_from_a_1_process_state_reads_the_same_global_order(
        labelled_dataset, source):
    """A 1-process run (batch 8) vs the same run resumed at cur_nimg 40 (inside epoch 1, inside
    a remote block) on 2 processes x 2 workers (batch 4 each): the same image, label, pixels and
    mirror flip at every position."""
    data = sources(labelled_dataset)[source]
    one = read_positions(DataConfig(**{**data.__dict__, "num_workers": 0}), 16, batch=8,
                         world=1, start=0, steps=12)
    two = read_positions(data, 16, batch=4, world=2, start=40, steps=7)
    assert sorted(two) == list(range(40, 96))
    for p in two:
        assert two[p][:2] == one[p][:2], p
        assert torch.equal(two[p][2], one[p][2]), p


@pytest.mark.parametrize("source", ["local", "remote"])
def test_mirror_flip_is_a_function_of_seed_and_position(labelled_dataset, source):
    written = read_shard_set(labelled_dataset, 16)
    got = read_positions(sources(labelled_dataset)[source], 16, batch=6, world=1, start=30,
                         steps=10, seed=5)
    positions = sorted(got)
    flips = mirror_flags(torch.tensor(positions), 5).tolist()
    assert 15 <= sum(flips) <= 45                                # about half of 60
    for p, flip in zip(positions, flips):
        i, _, img = got[p]
        chw = torch.from_numpy(np.ascontiguousarray(written[i][0].transpose(2, 0, 1)))
        assert torch.equal(img, chw.flip(-1) if flip else chw), p


def test_remote_blocks_mix_their_shards_and_cover_the_epoch():
    """Remote order: each block is `interleave` shards of the epoch's shard permutation, their
    images permuted together (consecutive positions come from several shards)."""
    sizes = [5] * 7 + [3]                                        # 38 images in 8 shards
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = EpochOrder(seed=3, shard_sizes=sizes, interleave=3)
    images = order.images(np.arange(76))
    layouts = []
    for e in range(2):
        assert sorted(images[38 * e:38 * (e + 1)].tolist()) == list(range(38))
        p, blocks = 38 * e, []
        while p < 38 * (e + 1):
            lo, hi = order.block_span(p)
            shards = order.block_shards(p).tolist()
            blocks.append(shards)
            assert set(images[lo:hi].tolist()) == {
                i for s in shards for i in range(first[s], first[s] + sizes[s])}
            assert len(set(order.shard_of(images[lo:lo + 6]).tolist())) >= 2
            p = hi
        assert [len(b) for b in blocks] == [3, 3, 2]
        assert sorted(sum(blocks, [])) == list(range(8))
        layouts.append(blocks)
    assert layouts[0] != layouts[1]                              # a shard order per epoch


# ---------------------------------------------------------------------------- mixing


@pytest.fixture(scope="module")
def class_sorted_dataset(tmp_path_factory) -> Path:
    """10 classes of 20 + 2c images (290 in all), data_prep'd from class sub-folders: image
    indices, and so the shards, are sorted by class (shards of 32 images)."""
    root = tmp_path_factory.mktemp("sorted10")
    src = root / "src"
    for c in range(NUM_CLASSES):
        (src / f"class{c}").mkdir(parents=True)
        for k in range(20 + 2 * c):
            smooth_image(12, 12, 1000 * c + k).save(src / f"class{c}" / f"{k:03d}.png")
    return run_prep(root, "ds", source=str(src), max_res=8, labels="folders",
                    shard_images=32)


def chi_square(batches: list, freq: np.ndarray) -> tuple:
    """Pooled Pearson statistic of the class counts of `batches` (label tensors) against
    `freq` -> (statistic, degrees of freedom, p-value). Under uniform draws with replacement
    it is chi-square with len(batches) * (classes - 1) dof; draws without replacement (a
    permutation) vary less, so the test is conservative for them."""
    stat = 0.0
    for labels in batches:
        counts = np.bincount(labels.numpy(), minlength=freq.size)
        expect = freq * labels.numel()
        stat += float(((counts - expect) ** 2 / expect).sum())
    dof = len(batches) * (freq.size - 1)
    return stat, dof, float(chi2.sf(stat, dof))


def test_batches_pass_a_chi_square_test_against_the_class_frequencies(class_sorted_dataset):
    """200 batches of 64 on a class-sorted 10-class folder: 100 from the start (res 8), 50
    from a stream opened at a resume point (cur_nimg 7040, res 8) and 50 from a stream opened at
    a stage change (cur_nimg 16000, res 4) pass at the 1% level, pooled and each stream's first
    batch on its own; reading the same folder in index order fails the same test."""
    data = DataConfig(path=str(class_sorted_dataset), num_workers=2)
    written = read_shard_set(class_sorted_dataset, 8)
    labels = np.array([written[i][1] for i in range(len(written))])
    freq = np.bincount(labels, minlength=NUM_CLASSES) / labels.size
    assert labels.size == 290 and (np.diff(labels) >= 0).all()       # class-sorted

    def batches(res: int, start: int, n: int) -> list:
        stream = make_train_stream(data, res, batch_per_gpu=64, seed=0, rank=0, world_size=1,
                                   start_nimg=start, img_channels=3)
        return [next(stream)[1] for _ in range(n)]
    runs = [batches(8, 0, 100), batches(8, 7040, 50), batches(4, 16000, 50)]
    stat, dof, p = chi_square([b for run in runs for b in run], freq)
    assert dof == 200 * 9 and p >= 0.01, (stat, dof, p)
    for run in runs:                                                 # start, resume, stage
        first = chi_square(run[:1], freq)
        assert first[2] >= 0.01, first
        assert len(np.unique(run[0].numpy())) >= 8                  # not "1 class"
    # The test has power: the same folder in index order (each batch a run of 1-3 classes).
    sequential = [torch.from_numpy(labels[np.arange(64 * b, 64 * (b + 1)) % labels.size])
                  for b in range(200)]
    assert chi_square(sequential, freq)[2] < 1e-12


def test_spread_indices_cover_the_dataset_evenly():
    from pggan.data.order import spread_indices
    for n, total in [(5, 23), (13, 36), (2000, 3926), (7, 7), (1, 10), (9, 4)]:
        got = spread_indices(n, total)
        assert len(got) == min(n, total) and len(set(got.tolist())) == len(got)
        assert got[0] == 0 and got[-1] <= total - 1
        if n < total:            # gaps differ by at most one: no part of the data left out
            gaps = np.diff(np.append(got, total))
            assert gaps.max() - gaps.min() <= 1
