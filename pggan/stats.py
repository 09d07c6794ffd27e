"""Training statistics: `report(name, value)` from anywhere, reduced per tick, written out.

Any code running inside a training step calls `report("Loss/D/gp", per_sample_tensor)`; the
loop owns a `Collector` and activates it around the step (`with collector.active(): ...`), so
there is no global switch and code outside a run reports into nothing. At each tick the loop
calls `collector.reduce(engine)`: the mean of every reported element over all processes and all
steps of the tick. `RunLog` then writes the numbers (main process only):

  TensorBoard   RUN_DIR/tensorboard/events.out.tfevents.*  (scalars, image grids; the x axis is
                images shown, cur_nimg)
  stats.jsonl   RUN_DIR/stats.jsonl, one JSON object per tick
  console       one progress line per tick
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("pggan_collector", default=None)


class Collector:
    """Running sums of reported values between ticks. A tensor's sum stays on its device and
    its element count is known on the host, so `add` never moves data between host and device
    (no host sync per report, tested by counting in tests/test_logging_sync.py); `reduce`
    makes one host-to-device and one device-to-host transfer per tick."""

    def __init__(self):
        # name -> [device sum (float64 scalar tensor) or None, host sum (float), count (int)]
        self._sums: Dict[str, list] = {}

    def add(self, name: str, value) -> None:
        acc = self._sums.setdefault(name, [None, 0.0, 0])
        if isinstance(value, torch.Tensor):
            v = value.detach()
            s = v.sum(dtype=torch.float64)                          # [] on v's device
            acc[0] = s if acc[0] is None else acc[0] + s.to(acc[0].device)
            acc[2] += v.numel()
        else:
            acc[1] += float(value)
            acc[2] += 1

    @contextlib.contextmanager
    def active(self):
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def reduce(self, engine=None) -> Dict[str, float]:
        """Mean per name over everything reported since the last reduce, over all processes.
        Every process must call it (it is a collective when engine.world_size > 1)."""
        names = sorted(self._sums)
        if engine is not None and engine.world_size > 1:
            all_names = set()
            for lst in engine.all_gather_object(names):
                all_names.update(lst)
            names = sorted(all_names)
        device = engine.device if engine is not None else torch.device("cpu")
        empty = [None, 0.0, 0]
        accs = [self._sums.get(name, empty) for name in names]
        # [sum, n] per name: the host parts in one transfer, the device sums added in place.
        flat = torch.tensor([x for a in accs for x in (a[1], float(a[2]))],
                            dtype=torch.float64).to(device)
        dev = [(2 * i, a[0]) for i, a in enumerate(accs) if a[0] is not None]
        if dev:
            index = torch.tensor([i for i, _ in dev], device=device)
            flat.index_add_(0, index, torch.stack([s.to(device) for _, s in dev]))
        if engine is not None and engine.world_size > 1 and names:
            engine.all_reduce_sum_(flat)
        flat = flat.cpu().tolist()
        self._sums.clear()
        return {name: (flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] > 0 else float("nan"))
                for i, name in enumerate(names)}


def report(name: str, value):
    """Record `value` (a number or a tensor of per-sample values) under `name` in the active
    collector, if any. Returns `value` so it can wrap an expression."""
    collector = _ACTIVE.get()
    if collector is not None:
        collector.add(name, value)
    return value


# --------------------------------------------------------------------------------------------
# Image grids.


def image_grid_tensor(images: torch.Tensor, cols: Optional[int] = None) -> torch.Tensor:
    """float [N, C, H, W] in [-1, 1] -> uint8 [rows*H, cols*W, C] on the images' device (C = 1
    or 3; empty cells black). Laid out on the device, so only the finished grid is copied."""
    n, c, h, w = images.shape
    cols = cols or max(1, int(math.ceil(math.sqrt(n))))
    rows = (n + cols - 1) // cols
    # (x + 1) * 127.5 + 0.5 of x in [-1, 1] lies in [0.5, 255.5]: truncation rounds to 0..255.
    x = images.float().clamp(-1, 1).add_(1).mul_(127.5).add_(0.5).to(torch.uint8)
    if rows * cols > n:
        x = torch.cat([x, x.new_zeros(rows * cols - n, c, h, w)])
    x = x.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2)          # [rows, H, cols, W, C]
    return x.reshape(rows * h, cols * w, c)                             # [H', W', C]


def image_grid(images: torch.Tensor, cols: Optional[int] = None) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 numpy [rows*H, cols*W, C] (C = 1 or 3)."""
    return image_grid_tensor(images, cols).cpu().numpy()


# --------------------------------------------------------------------------------------------
# Writers.


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    from tqdm import tqdm
    return tqdm.format_interval(seconds)


def append_line(f, line: str, path: Path) -> None:
    """Append `line` to the open file `f` in one unbuffered write; if the disk is full (or any
    write fails) the file is cut back to where it was, so it never ends in half a line, and the
    OSError names `path`."""
    data, fd = line.encode("utf-8"), f.fileno()
    pos = os.lseek(fd, 0, os.SEEK_END)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
    except OSError as e:
        try:
            os.ftruncate(fd, pos)
        except OSError:
            pass
        raise OSError(e.errno, e.strerror, str(path)) from e


class RunLog:
    """TensorBoard + stats.jsonl + console for one run. Writes nothing unless `enabled` (the
    main process)."""

    def __init__(self, run_dir: Path, enabled: bool, print_fn=print):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.print_fn = print_fn
        self._tb = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            self._jsonl = open(self.run_dir / "stats.jsonl", "a", encoding="utf-8")

    def console(self, line: str) -> None:
        if self.enabled:
            self.print_fn(line, flush=True)

    def tick(self, stats: Dict[str, float], cur_nimg: int, wall_time: float) -> None:
        if not self.enabled:
            return
        for name, value in stats.items():
            if value is not None and math.isfinite(value):
                self._tb.add_scalar(name, value, global_step=cur_nimg, walltime=wall_time)
        record = {"cur_nimg": cur_nimg, "kimg": cur_nimg / 1000, "time": wall_time}
        record.update({k: (v if v is None or math.isfinite(v) else None)
                       for k, v in stats.items()})
        append_line(self._jsonl, json.dumps(record) + "\n", self.run_dir / "stats.jsonl")
        self._tb.flush()

    def scalars(self, values: Dict[str, float], cur_nimg: int, wall_time: float) -> None:
        if self.enabled:
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    self._tb.add_scalar(name, value, global_step=cur_nimg, walltime=wall_time)
            self._tb.flush()

    def grid(self, tag: str, grid: np.ndarray, cur_nimg: int, wall_time: float) -> None:
        if self.enabled:
            self._tb.add_image(tag, grid, global_step=cur_nimg, walltime=wall_time,
                               dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
