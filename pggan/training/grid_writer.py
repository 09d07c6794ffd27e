"""Image grids encoded and written off the training thread.

At every tick (and with every snapshot) the loop shows G_ema's grid of fixed latents. Encoding
it as PNG costs the training thread seconds at high resolution (the 16-image grid of a 1024-px
run is 4096 x 4096 x 3), and TensorBoard encodes its own copy again. Here the loop only lays
the grid out on the device and hands it over; one background thread copies it off the device
(CUDA: into pinned memory with non_blocking, waiting on an event in the thread, not in the
loop), encodes it and writes the PNGs (atomically, pggan/files.py save_png) and the TensorBoard
image.

  bounded       at most MAX_QUEUED grids wait; `submit` blocks beyond that, so a slow disk
                slows the loop down instead of filling the memory with grids
  one thread    PNGs are written in the order submitted (fakes-latest.png is always the
                newest), and no two writes share a temp file name (pid-based)
  errors        a failed write (OSError naming the file: disk full, I/O error) is kept and
                raised in the training thread by the next `submit` or by `close`, inside the
                loop's guarded writes: the run stops with the usual one-line disk error
                (exit 5). After a failure the thread writes nothing more.
  close         joins the thread after the last queued grid; the loop calls it before a run
                ends (done, or stopped by a signal) and on every other way out
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from ..files import save_png

MAX_QUEUED = 2          # grids waiting to be written: 2 x 48 MiB at 1024 px (16 images)
_STOP = object()


class GridWriter:
    def __init__(self, log, max_queued: int = MAX_QUEUED):
        self.log = log                  # stats.RunLog: TensorBoard images (main process)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: Optional[BaseException] = None     # raised once in the training thread
        self._failed = False                            # stays set: nothing more is written
        self._closed = False
        self.written = 0                # jobs done (tests)
        self._thread = threading.Thread(target=self._run, name="pggan-grid-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, grid: torch.Tensor, paths: Sequence, tensorboard:
               Optional[Tuple[str, int, float]] = None) -> None:
        """Queue uint8 [H, W, C] `grid` (any device) for the PNG files `paths` and, if given,
        TensorBoard (tag, cur_nimg, wall time). Raises the error of an earlier write first."""
        self.raise_error()
        if self._closed:
            raise RuntimeError("GridWriter.submit after close")
        if grid.dtype != torch.uint8 or grid.ndim != 3:
            raise ValueError(f"GridWriter.submit: expected uint8 [H, W, C], got {grid.dtype} "
                             f"{list(grid.shape)}")
        ready = None
        if grid.device.type == "cuda":
            host = torch.empty(grid.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(grid, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host = grid.to("cpu")
        self._queue.put((host, ready, [Path(p) for p in paths], tensorboard))

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self._failed:
                continue                # the run is stopping; write nothing more
            host, ready, paths, tensorboard = job
            try:
                if ready is not None:
                    ready.synchronize()           # this thread waits, not the training loop
                image = host.numpy()              # [H, W, C] uint8
                for path in paths:
                    save_png(path, image)
                if tensorboard is not None:
                    tag, cur_nimg, wall_time = tensorboard
                    self.log.grid(tag, image, cur_nimg, wall_time)
                self.written += 1
            except BaseException as e:  # noqa: BLE001 (raised in the training thread)
                self._error, self._failed = e, True

    def raise_error(self) -> None:
        """Raise (once) the exception of a failed write, if any."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self, raise_error: bool = True) -> None:
        """Write what is queued, end the thread; then raise a failed write's error unless
        `raise_error` is False (a way out that already reports another error)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        if raise_error:
            self.raise_error()
