"""The training step moves no statistics between host and device: every report() stays on the
device and the tick's reduce does the only transfers.

A CUDA host sync needs a GPU to observe (torch.cuda.set_sync_debug_mode, the gpu-marked test);
on CPU we count, under a dispatch mode, the ops that would be host <-> device round trips on a
GPU: a tensor built from host numbers (aten.lift_fresh: torch.tensor(float, device=...)) and a
device value read back on the host (aten._local_scalar_dense: .item(), float(t), int(t)), plus
copies that change device. The statistics of a real step (every report() inside it) must
dispatch none of them. (Other code of the step is not in this count: the data stream builds
host tensors from host lists, which the same ops would flag on a CPU.)"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pggan.config import Config
from pggan.stats import Collector, report
from pggan.training.engine import Engine
from pggan.training.loop import Trainer

ROUND_TRIPS = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default",
               "aten._local_scalar_dense.default"}


class CountRoundTrips(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        moves = name in ("aten._to_copy.default", "aten.copy_.default") and any(
            isinstance(a, torch.Tensor) and "device" in kwargs and
            torch.device(kwargs["device"]) != a.device for a in args)
        if name in ROUND_TRIPS or moves:
            self.seen.append(name)
        return func(*args, **kwargs)


def test_the_counter_sees_what_it_counts():
    x = torch.randn(3)
    with CountRoundTrips() as c:
        torch.tensor(1.0)
        float(x.sum())
    assert c.seen == ["aten.lift_fresh.default", "aten._local_scalar_dense.default"]


def test_collector_add_makes_no_round_trip_and_reduce_is_right():
    col = Collector()
    gp = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    total = torch.full([4], 0.5)
    with CountRoundTrips() as c, col.active():
        for _ in range(10):
            report("Loss/D/gp", gp)
            report("Loss/D/total", total)
            report("Loss/D/total", 2.5)                  # a host number stays on the host
        report("a", torch.ones(2))
    assert c.seen == []
    with CountRoundTrips() as c:
        stats = col.reduce()
    # The tick's reduce: host sums in, device sums' index in, one read back (tolist, which
    # on a CPU tensor does not dispatch).
    assert c.seen.count("aten.lift_fresh.default") <= 2
    assert stats["Loss/D/gp"] == pytest.approx(2.0)
    assert stats["Loss/D/total"] == pytest.approx((10 * 4 * 0.5 + 10 * 2.5) / 50)
    assert stats["a"] == 1.0 and col.reduce() == {}


def test_train_step_has_no_round_trips():
    cfg = Config()
    cfg.model.max_res, cfg.model.fmap_base, cfg.model.fmap_max = 16, 64, 16
    cfg.model.latent_dim = 16
    cfg.schedule.batch_by_res, cfg.schedule.batch_per_gpu_by_res = {4: 8, 8: 8, 16: 8}, {}
    cfg.schedule.lr_by_res = {}
    cfg.data.num_workers = 0
    import tempfile
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Engine(), run_dir, print_fn=lambda *a, **k: None)
        point = trainer.schedule.at(0)
        trainer.enter_stage(point)
        col = CountingCollector()
        with col.active():
            trainer.train_step(point)                    # warm-up: stream, optimizer state
            col.calls, col.seen = 0, []
            trainer.train_step(point)
        # WGAN-GP: D adversarial, real and fake scores, drift, gp, totals; G terms.
        assert col.calls >= 8
        assert col.seen == [], col.seen
        stats = col.reduce()
        assert "Loss/D/gp" in stats and stats["Loss/D/gp"] >= 0


class CountingCollector(Collector):
    """A Collector that counts the round trips its own add() dispatches."""

    def __init__(self):
        super().__init__()
        self.calls, self.seen = 0, []

    def add(self, name, value):
        self.calls += 1
        with CountRoundTrips() as c:
            super().add(name, value)
        self.seen += c.seen
