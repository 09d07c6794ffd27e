"""The device side of the non-finite guard (pggan/training/nonfinite.py): a step whose loss or
gradient is NaN/Inf changes nothing (weights, both Adam states and step counts, G_ema, ADA's
sums) although no host code looked at a flag during the step; on_nonfinite stop keeps every
later step from changing anything too; the host learns of the step at the next drain, with the
step's own position. The CLI-level guarantees (exit 4, nothing saved, 2 processes) are in
tests/faults/test_fault_nonfinite.py."""
import copy

import pytest
import torch

from loopkit import make_trainer, tiny_cfg
from pggan.training.loop import EXIT_NONFINITE, RunStopped, Trainer
from pggan.training.nonfinite import NonfiniteFlags, StepRecord


def snapshot(trainer):
    """Everything a step may change, cloned."""
    nets = {n: copy.deepcopy(getattr(trainer, n).state_dict()) for n in ("G", "D", "G_ema")}
    opts = {n: copy.deepcopy(o.state_dict()["state"]) for n, o in trainer.opt.items()}
    ada = trainer.ada.accum.clone() if trainer.ada is not None else None
    return nets, opts, ada


def assert_same(a, b):
    for name in a[0]:
        for k, v in a[0][name].items():
            assert torch.equal(v, b[0][name][k]), f"{name}.{k} changed"
    for name in a[1]:
        assert a[1][name].keys() == b[1][name].keys(), name
        for i, st in a[1][name].items():
            for k, v in st.items():
                assert torch.equal(v, b[1][name][i][k]), f"{name}_opt[{i}].{k} changed"
    if a[2] is not None:
        assert torch.equal(a[2], b[2])


def nan_D_at(monkeypatch, nimgs):
    orig = Trainer._run_D

    def run_D(self, img, c, alpha):
        out = orig(self, img, c, alpha)
        return out * float("nan") if self.cur_nimg in nimgs else out
    monkeypatch.setattr(Trainer, "_run_D", run_D)


def started(tmp_path, **train):
    overrides = {"train": train, "augment": {"mode": "ada", "interval": 1000}}
    t = make_trainer(tiny_cfg(tmp_path / "run", overrides))
    t.log = type("Log", (), {"lines": [], "console": lambda self, s: self.lines.append(s)})()
    point = t.schedule.at(0)
    t.enter_stage(point)
    for _ in range(2):              # Adam states with moments, G_ema moved, ADA sums
        step(t)
    assert [bad for _, bad in t.nonfinite.drain()] == [[False, False]] * 2
    return t


def step(t):
    with t.collector.active():      # as in run(): the loss terms are reported
        t.train_step(t.schedule.at(t.cur_nimg))


def test_fused_adam_with_found_inf_changes_nothing():
    p = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.0, 0.99), fused=True)
    for found in (0.0, 1.0):
        before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
        p.grad = torch.full_like(p, float("nan")) if found else torch.randn_like(p)
        opt.found_inf = torch.tensor(found)
        opt.step()
        if found:
            assert torch.equal(p, before[0])
            for k, v in opt.state[p].items():
                assert torch.equal(v, before[1][k]), k
        else:
            assert not torch.equal(p, before[0]) and int(opt.state[p]["step"]) == 1


def test_a_nonfinite_step_changes_nothing_and_the_next_one_trains(tmp_path, monkeypatch):
    t = started(tmp_path, on_nonfinite="skip")
    bad_nimg = t.cur_nimg
    nan_D_at(monkeypatch, {bad_nimg})
    before = snapshot(t)
    step(t)
    assert_same(before, snapshot(t))
    assert t.cur_nimg == bad_nimg + 8 and t.step_index == 3         # the position moves on
    step(t)                                                         # finite: trains again
    after = snapshot(t)
    assert not torch.equal(after[0]["G"]["input.dense.weight"],
                           before[0]["G"]["input.dense.weight"])
    assert t.nonfinite_skips == 0 and not t.log.lines               # nothing read yet
    t._check_nonfinite()
    assert t.nonfinite_skips == 1
    (line,) = t.log.lines
    assert "skipped a step: non-finite D loss term Loss/D/" in line
    assert f"kimg {bad_nimg / 1000:g}" in line and "(1 in a row, at most 10)" in line


def test_stop_freezes_the_weights_until_the_host_stops_the_run(tmp_path, monkeypatch):
    t = started(tmp_path)                                           # on_nonfinite stop
    bad_nimg = t.cur_nimg
    nan_D_at(monkeypatch, {bad_nimg})
    before = snapshot(t)
    for _ in range(3):                                              # 1 bad, then 2 finite
        step(t)
    assert_same(before, snapshot(t))
    with pytest.raises(RunStopped) as e:
        t._check_nonfinite()
    assert e.value.code == EXIT_NONFINITE
    assert f"at 4x4, kimg {bad_nimg / 1000:g}: stopped without saving" in str(e.value)


def test_a_bad_G_phase_keeps_the_D_update_of_its_step(tmp_path, monkeypatch):
    """As before the guard moved to the device: phases already stepped keep their update."""
    t = started(tmp_path, on_nonfinite="skip")
    orig = Trainer._run_G

    def run_G(self, z, c, res, alpha):
        out = orig(self, z, c, res, alpha)
        return out * float("nan") if torch.is_grad_enabled() else out   # G phase only
    monkeypatch.setattr(Trainer, "_run_G", run_G)
    before = snapshot(t)
    step(t)
    after = snapshot(t)
    assert not torch.equal(after[0]["D"]["output.out.weight"], before[0]["D"]["output.out.weight"])
    for name in ("G", "G_ema"):
        for k, v in before[0][name].items():
            assert torch.equal(v, after[0][name][k]), f"{name}.{k}"
    (record, bad), = t.nonfinite.drain()
    assert [p for p, _ in record.phases] == ["D_main", "G_main"] and bad == [False, True]


def test_flags_drain_in_step_order_with_one_copy():
    flags = NonfiniteFlags("cpu", sticky=False)
    params = [torch.nn.Parameter(torch.ones(2))]
    for i, value in enumerate((1.0, float("inf"), 1.0)):
        flags.begin_step()
        params[0].grad = torch.full((2,), value)
        assert float(flags.phase_found_inf(params)) == (1.0 if i == 1 else 0.0)
        assert bool(flags.keep()) == (i != 1)
        flags.end_step(StepRecord(i, 8 * i, 4, (("D_main", "D"),)))
    assert flags.pending_steps == 3
    out = flags.drain()
    assert [(r.step_index, bad) for r, bad in out] == [(0, [False]), (1, [True]), (2, [False])]
    assert flags.drain() == []
    with pytest.raises(ValueError, match="phases"):
        flags.begin_step()
        flags.end_step(StepRecord(3, 24, 4, (("D_main", "D"),)))
