"""Loader worker processes that hand batches to the training process through reused
shared-memory slots.

Why not torch's DataLoader: it sends every batch through freshly allocated shared memory (a new
shm file per batch, written page by page in the worker and mapped again in the trainer). On a
2-core x86_64 CPU (2026-11-22, benchmarks/data_loader.py, 2 workers) that path reached 72-76%
of the raw decode rate per CPU-second at 256 and 1024 px; this one, with memory-mapped shards
(tar_reader.py), 91% (best of 5 runs; see benchmarks/RESULTS.md). Here each worker owns `slots` fixed batch buffers in shared memory,
allocated once: it decodes straight into a free slot (mirroring and colour conversion on the
way), sends a small message (slot, count, labels, indices) over its pipe, and the training
process copies the images out (into pinned memory when asked, which the DataLoader's pin thread
would copy anyway) and hands the slot back. The copy-out means a batch the caller keeps is
never overwritten.

Order: batches are taken from the workers in turn (worker 0, 1, ..., 0, ...), skipping workers
whose producer has ended, exactly as the DataLoader does for an iterable dataset, so a stream
is a pure function of its seeds whatever the timing.

Producers: `producer(worker, num_workers)` (called inside the worker, so it must be picklable
for the spawn start method) returns an iterator of pending batches: objects with `n` (images),
`write_into(out)` (fills a uint8 [n, H, W, C] numpy view), `labels` and `indices` (sequences of
n ints, or None).

Signals: workers ignore the trainer's stop signals (a signal to the process group must not kill
them mid-step; see workers.py), so they are stopped by a message and, after a grace period,
SIGKILL (which cannot be ignored). A dropped iterator, `close()` and interpreter exit all stop
them.
"""
from __future__ import annotations

import os
import pickle
import signal
import traceback
import weakref
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.multiprocessing as mp

from .dataset_info import DatasetError
from .workers import STOP_SIGNALS, ignore_stop_signals

# Seconds between liveness checks while waiting for a batch or a free slot.
_POLL_S = 1.0
# Seconds a worker gets to exit after the stop message before it is killed.
_GRACE_S = 2.0

# (images uint8 [n, C, H, W] channels_last, labels int64 [n] or None, indices int64 [n] or None)
Batch = Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]
Producer = Callable[[int, int], Iterator]


def _int64(values: Optional[Sequence[int]]) -> Optional[torch.Tensor]:
    return None if values is None else torch.as_tensor(values, dtype=torch.int64)


def _host_batch(pending, hwc: Tuple[int, int, int], pin_memory: bool) -> Batch:
    out = torch.empty((pending.n,) + hwc, dtype=torch.uint8, pin_memory=pin_memory)
    pending.write_into(out.numpy())
    return out.permute(0, 3, 1, 2), _int64(pending.labels), _int64(pending.indices)


def in_process_batches(producer: Producer, hwc: Tuple[int, int, int],
                       pin_memory: bool = False) -> Iterator[Batch]:
    """The same batches without worker processes (num_workers = 0)."""
    for pending in producer(0, 1):
        yield _host_batch(pending, hwc, pin_memory)


def _portable(exn: BaseException) -> BaseException:
    """`exn` if it survives pickling, else a RuntimeError with its text; non-dataset errors carry
    the worker's traceback as a note (dataset errors are one-line messages for the user)."""
    if not isinstance(exn, DatasetError):
        note = "in a data loader worker:\n" + "".join(
            traceback.format_exception(type(exn), exn, exn.__traceback__))
        try:
            exn.add_note(note)
        except AttributeError:
            pass
    try:
        pickle.loads(pickle.dumps(exn))
        return exn
    except Exception:                       # noqa: BLE001 (anything unpicklable)
        return RuntimeError(f"{type(exn).__name__}: {exn}")


def _worker_main(producer: Producer, worker: int, num_workers: int, slots: torch.Tensor,
                 conn, parent_pid: int) -> None:
    """Fill free slots with the producer's batches until it ends or the trainer says stop."""
    ignore_stop_signals(worker)
    # Started with the stop signals blocked (WorkerPool.__init__): one that arrived before the
    # line above is discarded now, not fatal.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    torch.set_num_threads(1)                # the workers already use every core between them
    free: List[int] = list(range(slots.shape[0]))
    views = slots.numpy()                   # [slots, B, H, W, C]

    def wait_for_slot() -> bool:
        """Take in returned slots (waiting while none is free). False: stop (asked to, or the
        trainer is gone)."""
        try:
            while True:
                if not conn.poll(0 if free else _POLL_S):
                    if free:
                        return True
                    if os.getppid() != parent_pid:
                        return False
                    continue
                msg = conn.recv()
                if msg[0] == "stop":
                    return False
                free.append(msg[1])
        except (EOFError, OSError):
            return False

    def send(msg) -> bool:
        try:
            conn.send(msg)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False                        # the trainer closed the stream

    try:
        for pending in producer(worker, num_workers):
            if not wait_for_slot():
                return
            k = free.pop()
            pending.write_into(views[k, :pending.n])
            if not send(("batch", k, pending.n, pending.labels, pending.indices)):
                return
        send(("end",))
    except Exception as exn:                    # noqa: BLE001 (re-raised in the trainer)
        send(("error", _portable(exn)))


def _stop_workers(procs: list, conns: list) -> None:
    """Stop message, a grace period, then SIGKILL; never raises (runs from finalizers)."""
    for conn in conns:
        try:
            conn.send(("stop",))
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


def _describe_exit(code: Optional[int]) -> str:
    if code is not None and code < 0:
        if -code == signal.SIGBUS:
            return ("killed by SIGBUS: a memory-mapped shard was truncated while it was read; "
                    "run data_prep again or restore the shard")
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """Iterator of `Batch`es made by `num_workers` processes running `producer`."""

    def __init__(self, producer: Producer, num_workers: int, batch: int,
                 hwc: Tuple[int, int, int], *, slots: int = 3, pin_memory: bool = False):
        if num_workers < 1:
            raise ValueError(f"WorkerPool needs num_workers >= 1 (got {num_workers})")
        self.hwc, self.pin_memory = hwc, pin_memory
        # [workers, slots, batch, H, W, C] uint8, shared with the workers; allocated once.
        self.slots = torch.empty((num_workers, slots, batch) + hwc,
                                 dtype=torch.uint8).share_memory_()
        ctx = mp.get_context()
        self.procs, self.conns = [], []
        # Also stops the workers started so far if a later start fails.
        self._finalizer = weakref.finalize(self, _stop_workers, self.procs, self.conns)
        # A stop signal must not kill a worker in the moment between its start and its
        # ignore_stop_signals: workers start with them blocked (the trainer gets its own
        # signal once they are unblocked here).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for w in range(num_workers):
                parent_end, child_end = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_worker_main, daemon=True,
                                   args=(producer, w, num_workers, self.slots[w], child_end,
                                         os.getpid()),
                                   name=f"pggan-data-{w}")
                proc.start()
                child_end.close()
                self.procs.append(proc)
                self.conns.append(parent_end)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.active = list(range(num_workers))    # workers whose producer has not ended
        self.pos = 0                              # index into `active` of the next turn

    def __iter__(self) -> "WorkerPool":
        return self

    def _receive(self, w: int):
        conn, proc = self.conns[w], self.procs[w]
        try:
            while not conn.poll(_POLL_S):
                if not proc.is_alive():
                    break
            return conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError):    # gone, maybe mid-message
            pass
        proc.join(_GRACE_S)
        raise DatasetError(f"data loader worker {w} of {len(self.procs)} died "
                           f"({_describe_exit(proc.exitcode)}); if it was killed for memory, "
                           f"lower --num-workers (remote shards: or data.interleave_shards)")

    def __next__(self) -> Batch:
        while self.active:
            w = self.active[self.pos]
            try:
                msg = self._receive(w)
            except BaseException:
                self.close()
                raise
            if msg[0] == "batch":
                _, k, n, labels, indices = msg
                out = torch.empty((n,) + self.hwc, dtype=torch.uint8,
                                  pin_memory=self.pin_memory)
                # numpy's copy, single-threaded: torch's copy_ would wake its OpenMP threads,
                # which then spin-wait, burning a core the loader workers need.
                np.copyto(out.numpy(), self.slots[w, k, :n].numpy())
                try:
                    self.conns[w].send(("free", k))
                except OSError:
                    pass        # the worker has ended (an "end" follows) or died (reported next)
                self.pos = (self.pos + 1) % len(self.active)
                return out.permute(0, 3, 1, 2), _int64(labels), _int64(indices)
            if msg[0] == "end":
                del self.active[self.pos]           # the next worker takes this turn
                if self.active:
                    self.pos %= len(self.active)
                continue
            self.close()
            raise msg[1]                        # "error": the worker's exception
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Stop the workers now (also done when the iterator is dropped)."""
        self.active = []
        self._finalizer()


def without_indices(stream: Iterator[Batch]) -> Iterator[Tuple[torch.Tensor,
                                                                Optional[torch.Tensor]]]:
    """(images, labels, indices) batches -> (images, labels)."""
    for images, labels, _ in stream:
        yield images, labels


def batch_stream(producer: Producer, num_workers: int, batch: int, hwc: Tuple[int, int, int],
                 *, pin_memory: bool = False, slots: int = 3) -> Iterator[Batch]:
    """`producer`'s batches from `num_workers` worker processes (0: in this process)."""
    if num_workers == 0:
        return in_process_batches(producer, hwc, pin_memory)
    return WorkerPool(producer, num_workers, batch, hwc, slots=slots, pin_memory=pin_memory)
