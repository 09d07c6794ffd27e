"""pggan.data.worker_pool: batches through reused shared-memory slots, in worker order, with
errors, dead workers and shutdown handled; decode.store_rgb's one-pass mirror."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch

from pggan.config import DataConfig
from pggan.data import DatasetError, make_epoch_stream, make_train_stream
from pggan.data.decode import store_rgb
from pggan.data.worker_pool import WorkerPool, batch_stream

REPO = Path(__file__).resolve().parents[2]
HWC = (4, 4, 3)


@dataclass
class Filled:
    """A pending batch whose every pixel of image j is `values[j]`."""
    values: List[int]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def labels(self) -> List[int]:
        return self.values

    indices = None

    def write_into(self, out: np.ndarray) -> None:
        for j, v in enumerate(self.values):
            out[j] = v


@dataclass(frozen=True)
class Counting:
    """Worker w yields `batches[w]` batches; batch b of worker w holds 100 * w + 10 * b + j."""
    batches: tuple
    batch: int = 3
    fail_at: Optional[int] = None       # worker 0 raises before its batch `fail_at`

    def __call__(self, worker: int, num_workers: int):
        assert num_workers == len(self.batches)
        for b in range(self.batches[worker]):
            if worker == 0 and b == self.fail_at:
                raise ValueError(f"bad sample in batch {b}")
            # The last batch of a worker is partial (n = 2), like an epoch's last batch.
            n = self.batch if b + 1 < self.batches[worker] else 2
            yield Filled([100 * worker + 10 * b + j for j in range(n)])


def values(batch) -> List[int]:
    images, labels, _ = batch
    assert images.shape[1:] == (3, 4, 4) and images.dtype == torch.uint8
    firsts = images[:, 0, 0, 0].tolist()
    assert all(bool((img == v).all()) for img, v in zip(images, firsts))
    assert labels.tolist() == firsts
    return firsts


def test_workers_are_taken_in_turn_and_ended_workers_are_skipped():
    pool = WorkerPool(Counting((1, 3, 2)), 3, batch=3, hwc=HWC)
    got = [values(b) for b in pool]
    assert got == [[0, 1],                                  # worker 0: one (partial) batch
                   [100, 101, 102], [200, 201, 202],       # then 1, 2, 1, 2, 1
                   [110, 111, 112], [210, 211],
                   [120, 121]]
    assert all(not p.is_alive() for p in pool.procs)        # ended with the stream


def test_batches_the_caller_keeps_are_never_overwritten():
    # 12 batches through 2 slots per worker: every kept batch must still hold its own values.
    kept = list(WorkerPool(Counting((12,)), 1, batch=3, hwc=HWC, slots=2))
    assert [values(b) for b in kept] == ([[10 * b + j for j in range(3)] for b in range(11)]
                                         + [[110, 111]])
    assert len({b[0].data_ptr() for b in kept}) == len(kept)


def test_one_worker_shard_stream_equals_the_in_process_stream(labelled_dataset):
    """Worker 0 of 1 draws with the same seeds in a worker process as in the trainer, so the
    two streams must agree batch for batch (more batches than slots)."""
    def take(num_workers):
        stream = make_train_stream(DataConfig(path=str(labelled_dataset),
                                              num_workers=num_workers), 16,
                                   batch_per_gpu=5, seed=7, rank=0, world_size=1,
                                   start_nimg=0, img_channels=3)
        return [next(stream) for _ in range(10)]
    for (a, la), (b, lb) in zip(take(0), take(1)):
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert b.is_contiguous(memory_format=torch.channels_last)


def test_producer_error_is_raised_in_the_trainer_with_the_worker_traceback():
    pool = WorkerPool(Counting((4, 4), fail_at=2), 2, batch=3, hwc=HWC)
    got = []
    with pytest.raises(ValueError, match="bad sample in batch 2") as err:
        for b in pool:
            got.append(values(b))
    assert got == [[0, 1, 2], [100, 101, 102], [10, 11, 12], [110, 111, 112]]
    assert any("in a data loader worker" in n and "raise ValueError" in n
               for n in getattr(err.value, "__notes__", []))
    assert all(not p.is_alive() for p in pool.procs)


def test_damaged_shard_in_a_worker_is_the_same_one_line_error(tmp_path, labelled_dataset):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(labelled_dataset, copy)
    shard = copy / "res-0008" / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(DatasetError, match=r"shard-000002.tar: cannot read shard "
                                           r"\(ShardReadError: (unexpected end of data|shard is 700 bytes)"):
        list(make_epoch_stream(DataConfig(path=str(copy), num_workers=2), 8, batch_size=4,
                               rank=0, world_size=1))


@dataclass(frozen=True)
class Endless:
    def __call__(self, worker: int, num_workers: int):
        while True:
            yield Filled([worker] * 3)


def test_a_dead_worker_is_a_clear_error_not_a_hang():
    pool = WorkerPool(Endless(), 2, batch=3, hwc=HWC)
    next(pool)
    os.kill(pool.procs[1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(DatasetError, match=r"data loader worker 1 of 2 died \(killed by "
                                           r"SIGKILL\).*--num-workers"):
        for _ in range(20):                 # batches already sent may still arrive first
            next(pool)
    assert time.monotonic() - t0 < 10
    assert all(not p.is_alive() for p in pool.procs)


def test_dropping_the_stream_stops_workers_that_ignore_stop_signals():
    stream = batch_stream(Endless(), 2, 3, HWC)
    assert [values(next(stream))[0] for _ in range(2)] == [0, 1]    # both workers are up
    procs = list(stream.procs)
    for p in procs:                         # the workers ignore SIGTERM (see workers.py)
        os.kill(p.pid, signal.SIGTERM)
    time.sleep(0.2)
    assert all(p.is_alive() for p in procs)
    del stream
    for p in procs:
        p.join(5)
    assert all(not p.is_alive() for p in procs)


def test_interpreter_exit_with_an_open_stream_does_not_hang(labelled_dataset):
    script = (
        "import os, sys\n"
        "from pggan.config import DataConfig\n"
        "from pggan.data import make_train_stream\n"
        f"s = make_train_stream(DataConfig(path={str(labelled_dataset)!r}, num_workers=2), 8,"
        " batch_per_gpu=4, seed=0, rank=0, world_size=1, start_nimg=0, img_channels=3)\n"
        "next(s)\n"
        "print(open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read(), flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stdout
    time.sleep(0.5)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]


# ---------------------------------------------------------------------------- store_rgb


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
def test_store_rgb_converts_and_mirrors_in_place(channels, mirror, contiguous):
    rng = np.random.default_rng(channels)
    native = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)    # BGR for 3 channels
    rgb = native[:, :, ::-1]
    expect = rgb[:, ::-1] if mirror else rgb
    canvas = np.zeros((5, 9, channels), np.uint8)
    out = canvas[:, 1:8] if not contiguous else np.zeros((5, 7, channels), np.uint8)
    store_rgb(native, out, mirror)
    np.testing.assert_array_equal(out, expect)
    if not contiguous:                      # nothing written outside the view
        assert not canvas[:, 0].any() and not canvas[:, 8].any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pinned_batches_equal_plain_ones_and_reach_the_device(num_workers):
    producer = Counting((3,) * max(num_workers, 1))
    plain = list(batch_stream(producer, num_workers, 3, HWC))
    pinned = list(batch_stream(producer, num_workers, 3, HWC, pin_memory=True))
    assert len(plain) == len(pinned) > 0
    for (a, la, _), (b, lb, _) in zip(plain, pinned):
        assert b.is_pinned() and not a.is_pinned()
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert torch.equal(b.to("cuda", non_blocking=True).cpu(), a)
