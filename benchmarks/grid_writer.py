"""The tick's image grid on the training thread: encoded there (the loop before the grid writer)
vs handed to the grid writer's thread (pggan/training/grid_writer.py).

    OMP_NUM_THREADS=1 python benchmarks/grid_writer.py --res 256 1024 --repeats 3

Per resolution: 16 images of the built-in synthetic source (the loop's default train.grid_size),
as the tick shows them: the full grid to fakes-latest.png and, above 256 px, a 256-px-per-cell
copy to TensorBoard (TB_GRID_MAX_CELL). "before": what the training thread used to do, lay the
grid out, encode and write the PNG, encode the TensorBoard image. "now": what it does now, lay
the grid out and queue it (GridWriter.submit), timed with the writer's thread held so that its
encoding does not share the core; "writer" is then that thread's time for the queued work,
until close() returns. Median over --repeats of wall time on
the CPU (no GPU: the device-to-host copy of a CUDA run is not in these figures).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pggan.config import DataConfig  # noqa: E402
from pggan.data.stream import make_train_stream  # noqa: E402
from pggan.files import save_png  # noqa: E402
from pggan.stats import RunLog, image_grid, image_grid_tensor  # noqa: E402
from pggan.training.grid_writer import GridWriter  # noqa: E402
from pggan.training.loop import TB_GRID_MAX_CELL  # noqa: E402

GRID = 16


def fakes(res: int) -> torch.Tensor:
    stream = make_train_stream(DataConfig(path=None, num_workers=0), res, batch_per_gpu=GRID,
                               seed=0, rank=0, world_size=1, start_nimg=0, img_channels=3)
    images, _ = next(stream)
    return images.float() / 127.5 - 1                              # [16, 3, res, res]


def small(x: torch.Tensor, res: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, res // TB_GRID_MAX_CELL) \
        if res > TB_GRID_MAX_CELL else x


def before(x: torch.Tensor, res: int, log: RunLog, out: Path) -> float:
    t0 = time.perf_counter()
    save_png(out / "fakes-latest.png", image_grid(x))
    log.grid("Images/fakes", image_grid(small(x, res)), 0, 0.0)
    return time.perf_counter() - t0


class HeldWriter(GridWriter):
    """The grid writer, its thread held until `release`: the training thread's own time is
    measured without the writer's encoding on the same core (this benchmark runs on one)."""

    def __init__(self, log):
        import threading
        self.go = threading.Event()
        super().__init__(log)

    def _run(self):
        self.go.wait()
        super()._run()


def now(x: torch.Tensor, res: int, log: RunLog, out: Path):
    writer = HeldWriter(log)
    t0 = time.perf_counter()
    if res <= TB_GRID_MAX_CELL:
        writer.submit(image_grid_tensor(x), [out / "fakes-latest.png"],
                      tensorboard=("Images/fakes", 0, 0.0))
    else:
        writer.submit(image_grid_tensor(x), [out / "fakes-latest.png"])
        writer.submit(image_grid_tensor(small(x, res)), [],
                      tensorboard=("Images/fakes", 0, 0.0))
    thread = time.perf_counter() - t0
    t1 = time.perf_counter()
    writer.go.set()
    writer.close()
    return thread, time.perf_counter() - t1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/grid_writer.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--res", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print("| res | grid px | before: training thread ms | now: training thread ms | "
          "writer thread ms |")
    print("|---:|---:|---:|---:|---:|")
    for res in args.res:
        x = fakes(res)
        b, n, w = [], [], []
        with tempfile.TemporaryDirectory() as d:
            log = RunLog(Path(d), True, print_fn=lambda *a, **k: None)
            for _ in range(args.repeats):
                b.append(before(x, res, log, Path(d)))
                thread, total = now(x, res, log, Path(d))
                n.append(thread)
                w.append(total)
            log.close()
        side = res * 4
        print(f"| {res} | {side} x {side} | {1e3 * statistics.median(b):.0f} | "
              f"{1e3 * statistics.median(n):.0f} | {1e3 * statistics.median(w):.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
