"""Image grids off the training thread (pggan/training/grid_writer.py): submit returns while
the PNG is still being encoded, at most MAX_QUEUED grids wait, files are written whole and in
order, a failed write stops the run with the one-line disk error (exit 5), and the thread is
joined before a run ends."""
import errno
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import pggan.training.grid_writer as gw
from loopkit import make_trainer, tiny_cfg
from pggan.stats import image_grid, image_grid_tensor
from pggan.training.grid_writer import GridWriter
from pggan.training.loop import EXIT_SAVE_FAILED


class NoLog:
    def __init__(self):
        self.images = []

    def grid(self, tag, image, cur_nimg, wall_time):
        self.images.append((tag, image.shape, cur_nimg))


def grid(value, size=8):
    return torch.full((size, size, 3), value, dtype=torch.uint8)


def test_image_grid_tensor_is_the_cell_by_cell_layout():
    g = torch.Generator().manual_seed(0)
    for n, c in ((1, 3), (5, 1), (16, 3), (7, 3)):
        imgs = torch.rand(n, c, 3, 2, generator=g) * 2 - 1
        cols = int(np.ceil(np.sqrt(n)))
        rows = -(-n // cols)
        x = ((imgs.clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
        ref = torch.zeros(c, rows * 3, cols * 2, dtype=torch.uint8)
        for i in range(n):
            r, q = divmod(i, cols)
            ref[:, r * 3:(r + 1) * 3, q * 2:(q + 1) * 2] = x[i]
        assert torch.equal(image_grid_tensor(imgs), ref.permute(1, 2, 0)), (n, c)
        assert np.array_equal(image_grid(imgs), ref.permute(1, 2, 0).numpy())


def test_submit_returns_while_the_png_is_encoded_and_files_come_in_order(tmp_path, monkeypatch):
    release, started = threading.Event(), threading.Event()
    real_save = gw.save_png
    order = []

    def slow_save(path, image):
        started.set()
        assert release.wait(30)
        order.append(int(image[0, 0, 0]))
        real_save(path, image)
    monkeypatch.setattr(gw, "save_png", slow_save)
    log = NoLog()
    w = GridWriter(log)
    t0 = time.monotonic()
    w.submit(grid(10), [tmp_path / "a.png"], tensorboard=("Images/fakes", 8, 0.0))
    assert started.wait(30)
    w.submit(grid(20), [tmp_path / "a.png"])
    assert time.monotonic() - t0 < 5 and not (tmp_path / "a.png").exists()
    release.set()
    w.close()
    assert order == [10, 20] and w.written == 2
    assert np.asarray(Image.open(tmp_path / "a.png"))[0, 0, 0] == 20      # the newest
    assert log.images == [("Images/fakes", (8, 8, 3), 8)]
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(RuntimeError, match="after close"):
        w.submit(grid(1), [tmp_path / "b.png"])


def test_the_queue_is_bounded(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(gw, "save_png", lambda path, image: release.wait(30))
    w = GridWriter(NoLog(), max_queued=1)
    w.submit(grid(1), [tmp_path / "x.png"])             # taken by the thread, blocked there
    time.sleep(0.2)
    w.submit(grid(2), [tmp_path / "x.png"])             # waits in the queue
    third = threading.Thread(target=w.submit, args=(grid(3), [tmp_path / "x.png"]))
    third.start()
    third.join(0.5)
    assert third.is_alive()                             # blocked: the queue is full
    release.set()
    third.join(30)
    assert not third.is_alive()
    w.close()
    assert w.written == 3


def test_a_failed_write_is_raised_in_the_training_thread_and_ends_the_writing(tmp_path,
                                                                              monkeypatch):
    def full(path, image):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(gw, "save_png", full)
    w = GridWriter(NoLog())
    w.submit(grid(1), [tmp_path / "fakes-latest.png"])
    deadline = time.monotonic() + 30
    while w._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError) as e:
        w.submit(grid(2), [tmp_path / "fakes-latest.png"])
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("fakes-latest.png")
    monkeypatch.undo()                                  # the disk is back: still nothing more
    w.submit(grid(3), [tmp_path / "later.png"])
    w.close()
    assert not (tmp_path / "later.png").exists() and w.written == 0


def test_a_run_whose_grid_write_fails_exits_5_with_one_line(tmp_path, monkeypatch, capsys):
    calls = []
    real_save = gw.save_png

    def fail_second_latest(path, image):
        if path.name == "fakes-latest.png":
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error", str(path))
        real_save(path, image)
    monkeypatch.setattr(gw, "save_png", fail_second_latest)
    cfg = tiny_cfg(tmp_path / "run")
    t = make_trainer(cfg)
    assert t.run() == EXIT_SAVE_FAILED
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("pggan-train: error:")]
    assert "fakes-latest.png: cannot write (Input/output error)" in line, line
    assert not list((tmp_path / "run").rglob(".*tmp*"))
    assert not t.grids._thread.is_alive()               # joined on the way out


def test_a_run_writes_every_grid_before_it_ends(tmp_path):
    from pggan.training.engine import Engine
    from pggan.training.loop import Trainer
    cfg = tiny_cfg(tmp_path / "run")
    lines = []
    t = Trainer(cfg, Engine(), cfg.train.run_dir, print_fn=lambda s, **k: lines.append(s))
    assert t.run() == 0
    assert not t.grids._thread.is_alive()
    run = tmp_path / "run"
    ticks = len((run / "stats.jsonl").read_text().splitlines())
    snapshots = sum(1 for ln in lines if ln.startswith("  snapshot "))
    assert ticks >= 5 and snapshots >= 3
    assert t.grids.written == ticks + snapshots     # every tick's grid and every snapshot's
    for name in ("fakes-latest.png", "fakes-000000.png"):
        img = np.asarray(Image.open(run / name))
        assert img.shape == (32, 32, 3)             # 2 x 2 cells of the last stage, 16 px
