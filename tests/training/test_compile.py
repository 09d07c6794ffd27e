"""train.compile (pggan/training/compile.py) on CPU with backend aot_eager (traced by dynamo and
aot_autograd, run by the eager kernels: no C++ compiler needed): the compiled step computes the
eager step's losses and weights (measured: bit for bit, torch 2.13), through a fade-in (alpha
changes at every step) without a recompile per step, with the penalty's D passes kept eager;
compiled there, the double backward fails, which is why the gate exists."""
import copy

import pytest
import torch

from loopkit import make_trainer, tiny_cfg
from pggan.training.compile import CompiledModules, phase_has_penalty
from pggan.losses import make_phases
from pggan.config import LossConfig

STEPS = 4
TOL = 1e-6          # relative; measured 0 (aot_eager runs the same kernels in the same order)


def run(tmp_path, kind, compile_mode):
    cfg = tiny_cfg(tmp_path / f"{kind}-{compile_mode}",
                   {"loss": {"kind": kind}, "train": {"compile": compile_mode}})
    t = make_trainer(cfg)
    stage = t.schedule.stage_of(8)
    t.cur_nimg = stage.start_nimg               # the 8x8 fade-in: alpha moves every step
    losses = []
    graphs = []
    import torch._dynamo.utils as dynamo_utils
    for _ in range(STEPS):
        point = t.schedule.at(t.cur_nimg)
        assert point.res == 8 and 0 <= point.alpha < 1
        t.enter_stage(point)
        with t.collector.active():
            t.train_step(point)
        losses.append({k: v for k, v in t.collector.reduce().items() if k.startswith("Loss/")})
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    return t, losses, graphs


def rel(a, b):
    return (a - b).abs().max().item() / max(a.abs().max().item(), 1e-12)


@pytest.mark.parametrize("kind", ["wgan-gp", "r3gan", "hinge"])
def test_compiled_step_equals_eager(tmp_path, kind):
    eager, l_eager, _ = run(tmp_path, kind, "off")
    comp, l_comp, graphs = run(tmp_path, kind, "aot_eager")
    assert eager.compiled is None and comp.compiled is not None
    for a, b in zip(l_eager, l_comp):
        assert a.keys() == b.keys() and len(a) >= 3
        for k in a:
            assert abs(a[k] - b[k]) <= TOL * max(abs(a[k]), 1e-12), (k, a[k], b[k])
    for name in ("G", "D", "G_ema"):
        sa, sb = getattr(eager, name).state_dict(), getattr(comp, name).state_dict()
        assert sa.keys() == sb.keys()           # checkpoints do not see the compile
        for k in sa:
            assert rel(sa[k].float(), sb[k].float()) <= TOL, (name, k)
    # The graphs of the first step serve the rest of the fade (alpha is not in them).
    assert graphs[1:] == [graphs[1]] * (STEPS - 1), graphs
    calls = comp.compiled.calls
    assert calls["compiled"] > 0
    # Penalty kinds run the penalty's D passes eagerly; hinge has none.
    assert (calls["eager"] > 0) == (kind != "hinge"), calls


def test_the_penalty_would_fail_compiled(tmp_path, monkeypatch):
    """Without the gate the WGAN-GP penalty's double backward runs into aot_autograd's
    compiled backward, which cannot be differentiated again (torch 2.13 says so as "requires
    create_graph=False" where the backward donated its buffers, else "does not currently
    support double backward")."""
    import contextlib
    monkeypatch.setattr(CompiledModules, "eager_if",
                        lambda self, flag: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="double backward|requires create_graph=False"):
        run(tmp_path, "wgan-gp", "aot_eager")


def test_which_phases_have_a_penalty():
    def names(kind, **kw):
        return [p.name for p in make_phases(LossConfig(kind=kind, **kw))
                if phase_has_penalty(p, kind)]
    assert names("wgan-gp") == ["D_main"]
    assert names("r3gan") == ["D_main"]                     # R1 + R2 on every D step
    assert names("r3gan", r1_interval=4) == ["D_reg"]
    assert names("logistic-r1") == ["D_reg"]                # lazy R1 by default
    assert names("logistic-r1", r1_interval=0) == ["D_both"]
    assert names("hinge") == [] and names("lsgan") == []


def test_unwrap_restores_the_class_forward(tmp_path):
    t, _, _ = run(tmp_path, "hinge", "aot_eager")
    block = t.G.blocks["8"]
    assert "forward" in vars(block)
    t.compiled.unwrap()
    assert "forward" not in vars(block) and t.compiled.calls["compiled"] > 0
    before = copy.deepcopy(dict(t.compiled.calls))
    with torch.no_grad():
        t.G(torch.randn(2, 16), None, 8, 0.5)
    assert dict(t.compiled.calls) == before
