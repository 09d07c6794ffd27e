"""Only the active stage computes: a network built for 1024x1024 trains its 4x4 stage like one
built for 32x32 (same gradients, optimizer state and EMA work, about the same step time)."""
import statistics
import time

import pytest
import torch

from pggan.config import Config
from pggan.training.engine import Engine
from pggan.training.loop import Trainer


def make_trainer(max_res: int, run_dir) -> Trainer:
    cfg = Config()                                  # the paper's network: fmap 8192 / 512
    cfg.model.max_res = max_res
    cfg.schedule.batch_by_res = {4: 16}
    cfg.data.num_workers = 0
    cfg.train.run_dir = str(run_dir)
    return Trainer(cfg, Engine(), run_dir)          # one CPU process


def step(trainer: Trainer) -> float:
    point = trainer.schedule.at(trainer.cur_nimg)
    trainer.enter_stage(point)
    t0 = time.perf_counter()
    trainer.train_step(point)
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("active")
    small, big = make_trainer(32, base / "32"), make_trainer(1024, base / "1024")
    for t in (small, big):
        step(t)                                     # warm-up, Adam state created
    yield small, big
    torch.set_num_threads(before)


def test_only_the_4x4_stage_has_gradients_and_optimizer_state(trainers):
    _small, big = trainers
    for name, net in big.nets.items():
        active = {id(p) for m in net.stage_modules(4) for p in m.parameters()}
        opt_state = big.opt[name].state
        n_inactive = 0
        for pname, p in net.named_parameters():
            if id(p) in active:
                continue
            n_inactive += 1
            assert p.grad is None, f"{name}.{pname} got a gradient at 4x4"
            assert p not in opt_state, f"{name}.{pname} has Adam state at 4x4"
        assert n_inactive == 8 * (4 + 2)            # 8 blocks 8..1024 (2 convs) + to/fromRGB
    # G_ema averages the 4x4 stage only.
    assert big.ema_modules == ["input", "torgb.4"]


def test_same_active_parameters_as_a_32px_network(trainers):
    small, big = trainers
    def count(t):
        return {n: sum(p.numel() for p in t.active_params[n]) for n in ("G", "D")}
    total_big = sum(p.numel() for p in big.G.parameters())
    assert count(small) == count(big)
    assert count(big)["G"] < total_big / 3          # 4x4 is a small part of the 1024 network


def test_step_time_at_4x4_does_not_grow_with_max_res(trainers):
    small, big = trainers
    times = {32: [], 1024: []}
    for _ in range(3):                              # interleaved: load changes hit both
        times[32].append(step(small))
        times[1024].append(step(big))
    t32, t1024 = statistics.median(times[32]), statistics.median(times[1024])
    print(f"4x4 step, batch 16, 1 thread: max-res 32 {t32 * 1e3:.0f} ms, "
          f"max-res 1024 {t1024 * 1e3:.0f} ms")
    # Running one more block (8x8, 512 channels) would cost more than 2x; the whole 1024
    # network hundreds of times more.
    assert t1024 < 1.5 * t32
