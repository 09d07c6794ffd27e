"""What the training loop does to the networks and optimizers, observed through the real
`Trainer.run()` on the tiny preset (trainkit.TINY_YAML): G_ema against the EMA formula applied to
G's recorded trajectory, Adam's lr / betas at every optimizer step of every stage against the
configuration, Adam's state at stage changes, and ADA's p moving the right way when D overfits
and when it cannot. Everything is recorded by wrapping public methods (loopkit.py).

Stages of the tiny preset (8 images per step): 4x4 [0, 64); 8x8 fades in over [64, 128) and
stabilises [128, 192); 16x16 fades in over [192, 256) and stabilises from 256."""
import json
import math

import pytest
import torch

from loopkit import LoopRecorder, make_trainer, tiny_cfg

F32_EPS = 2.0 ** -24            # unit roundoff of float32


def stage_of(nimg: int):
    """(res, phase) of the tiny preset at `nimg`, written out independently of the schedule."""
    if nimg < 64:
        return 4, "stab"
    if nimg < 192:
        return 8, "fade" if nimg < 128 else "stab"
    return 16, "fade" if nimg < 256 else "stab"


# ---- G_ema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ema", [{"ema_kimg": 0.05, "ema_rampup": 0.05},
                                 {"ema_kimg": 0.02, "ema_rampup": None},
                                 {"beta_per_step": 0.7}], ids=["rampup", "half-life", "per-step"])
def test_g_ema_is_the_ema_of_gs_trajectory(tmp_path, one_thread, ema):
    """After every step k (at cur_nimg n_k, batch b_k), for the parameters of the active stage:
    E_k = beta_k E_{k-1} + (1 - beta_k) G_k with beta_k = 0.5 ** (b_k / h_k),
    h_k = min(ema_kimg * 1000, n_k * rampup) (or beta_per_step); E_0 = G's initial weights.
    Parameters outside the active stage keep their average. G_k is recorded after each step
    by wrapping Trainer.train_step.

    Tolerance: the loop's lerp runs in float32 and rounds each step to within 2 units of
    roundoff of max |w|, and the lerp is a contraction, so after K steps the float64 reference
    differs by at most 2 K eps32 max|w| per tensor (K = 30: 3.6e-6 relative)."""
    cfg = tiny_cfg(tmp_path, {"ema": ema, "train": {"total_kimg": 0.24}})
    t = make_trainer(cfg)
    G, G_ema = t.G, t.G_ema
    E = {n: p.detach().double().clone() for n, p in G.named_parameters()}
    assert all(torch.equal(p, G_ema.state_dict()[n]) for n, p in G.named_parameters())
    module_name = {id(m): n for n, m in G.named_modules()}
    inner = t.train_step
    checked = []

    def train_step(point):
        n_k = t.cur_nimg
        inner(point)
        assert t.cur_nimg == n_k + point.batch
        if "beta_per_step" in ema:
            beta = ema["beta_per_step"]
        else:
            h = ema["ema_kimg"] * 1000.0
            if ema["ema_rampup"] is not None:
                h = min(h, n_k * ema["ema_rampup"])
            beta = 0.5 ** (point.batch / max(h, 1e-8))
        active = tuple(module_name[id(m)] + "." for m in G.stage_modules(point.res))
        k = len(checked) + 1
        ema_now = G_ema.state_dict()
        for n, p in G.named_parameters():
            if n.startswith(active):
                E[n] = beta * E[n] + (1.0 - beta) * p.detach().double()
            got = ema_now[n].double()
            tol = 2 * k * F32_EPS * max(E[n].abs().max().item(), p.abs().max().item()) + 1e-30
            err = (got - E[n]).abs().max().item()
            assert err <= tol, (f"step {k} (cur_nimg {n_k}, {point.res}x{point.res}): G_ema.{n} "
                                f"is {err:.3g} from the EMA of G's trajectory (tol {tol:.3g})")
        checked.append((n_k, point.res, beta))
    t.train_step = train_step
    assert t.run() == 0
    assert [c[0] for c in checked] == list(range(0, 240, 8))
    assert {c[1] for c in checked} == {4, 8, 16}
    # The average is not a copy: beta > 0 after the first step, and G_ema lags G at the end.
    assert all(c[2] > 0 for c in checked[1:])
    diff = max((G_ema.state_dict()[n] - p).abs().max().item() for n, p in G.named_parameters())
    assert diff > 1e-4


# ---- learning rates, betas and Adam state -----------------------------------------------------

LR_BY_RES = {4: 0.001, 8: 0.002, 16: 0.004}


def run_recorded(tmp_path, monkeypatch, overrides, total_kimg=0.32):
    overrides = dict(overrides)
    overrides.setdefault("train", {})["total_kimg"] = total_kimg
    t = make_trainer(tiny_cfg(tmp_path, overrides))
    rec = LoopRecorder(t, monkeypatch)
    assert t.run() == 0
    return t, rec


@pytest.mark.parametrize("ramp", [False, True], ids=["constant", "lr_ramp"])
def test_adam_lr_and_betas_at_every_step_of_every_stage(tmp_path, monkeypatch, one_thread, ramp):
    """Every Adam.step of G uses lr_by_res[res] (times the lr ramp's ratio when set) and betas
    (beta1, beta2); every step of D (the main and the lazy R1 phase) uses lr * c and betas ** c
    with c = r1_interval / (r1_interval + 1) (StyleGAN2 lazy regularisation), at points of all
    five segments of the schedule. Compared to 1e-12 relative: the loop computes the same
    float64 products."""
    k = 4
    sched = {"lr": 0.0015, "lr_by_res": LR_BY_RES}
    if ramp:
        sched["lr_ramp"] = {"start": 0.003, "end": 0.0015, "kimg": 0.3}
    over = {"schedule": sched, "loss": {"kind": "logistic-r1", "r1_interval": k},
            "optim": {"beta1": 0.5, "beta2": 0.95}}
    _t, rec = run_recorded(tmp_path, monkeypatch, over)
    c = k / (k + 1)
    seen = set()
    for s in rec.steps():
        res, phase = stage_of(s.cur_nimg)
        seen.add((res, phase))
        lr = LR_BY_RES[res]
        if ramp:
            u = min(s.cur_nimg / 300.0, 1.0)
            lr *= (0.0015 + (0.003 - 0.0015) * 0.5 * (1 + math.cos(math.pi * u))) / 0.0015
        mult = c if s.net == "D" else 1.0
        for got_lr, got_b in zip(s.lrs, s.betas):
            assert got_lr == pytest.approx(lr * mult, rel=1e-12), (s.net, s.cur_nimg)
            assert got_b == pytest.approx((0.5 ** mult, 0.95 ** mult), rel=1e-12), \
                (s.net, s.cur_nimg)
    assert seen == {(4, "stab"), (8, "fade"), (8, "stab"), (16, "fade"), (16, "stab")}
    steps = 40
    assert len(rec.steps("G")) == steps
    assert len(rec.steps("D")) == steps + steps // k      # + the lazy R1 phase every k steps


@pytest.mark.parametrize("grow,stab", [(True, False), (True, True), (False, False)],
                         ids=["reset_on_grow", "reset_on_grow+stab", "no_reset"])
def test_adam_state_empty_right_after_a_stage_change(tmp_path, monkeypatch, one_thread, grow,
                                                      stab):
    """Before the first Adam step of a new resolution (nimg 64, 192) each optimizer holds no
    state when optim.reset_on_grow is set (and also where a fade ends, 128 and 256, with
    reset_on_stab), so its step counter starts again at 0; everywhere else the state is kept
    and the counter is the number of steps since the last reset."""
    over = {"optim": {"reset_on_grow": grow, "reset_on_stab": stab},
            "loss": {"kind": "logistic-r1", "r1_interval": 4}}
    _t, rec = run_recorded(tmp_path, monkeypatch, over)
    resets = {0} | ({64, 192} if grow else set()) | ({128, 256} if stab else set())
    for net in ("G", "D"):
        since_reset, done = 0, set()
        for s in rec.steps(net):
            if s.cur_nimg in resets and s.cur_nimg not in done:     # first step after a reset
                done.add(s.cur_nimg)
                since_reset = 0
                assert s.state_len == 0, \
                    f"{net}: Adam state not empty at the first step at nimg {s.cur_nimg}"
            else:
                assert s.state_len > 0, f"{net}: Adam state lost at nimg {s.cur_nimg}"
            assert s.state_max_step == since_reset, (net, s.cur_nimg, s.state_max_step)
            since_reset += 1
        assert done == resets
        assert since_reset > 0


# ---- ADA ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def four_image_dataset(tmp_path_factory):
    """4 random-noise RGB images, max-res 16: a set D memorises within tens of steps."""
    import numpy as np
    from PIL import Image
    from data_prep.prepare import PrepOptions, prepare
    root = tmp_path_factory.mktemp("four")
    src = root / "src"
    src.mkdir()
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray((rng.rand(16, 16, 3) * 255).astype(np.uint8)).save(src / f"{i}.png")
    prepare(PrepOptions(source=str(src), out=str(root / "ds"), max_res=16, workers=1,
                        progress=False))
    return root / "ds"


# Every transform's probability multiplier 0: p is adjusted but changes nothing D sees, so
# the augmentation does not pull D back towards the target (p would settle there instead).
NO_OPS = {k: 0.0 for k in ("xflip", "translate", "rotate", "scale", "color")}
ADA_STEP = 32 / 2000.0          # p moves by (4 steps x 8 images) / (ada_kimg 2 x 1000) per update


@pytest.mark.parametrize("case", ["overfits", "cannot"])
def test_ada_p_follows_ds_overfitting(tmp_path, one_thread, four_image_dataset, case):
    """logistic-r1 with ADA (target 0.6, p from 0.5) on 4 images at 4x4 for 64 steps, lr 0.01:
    with a light R1 (gamma 0.1) D memorises the set, E[sign D(real)] reaches ~0.9 and p rises
    (measured: +10 to +12 updates net of 16, G catching up late on; asserted: +4);
    with a crushing R1 (gamma 1e4 every step) D cannot separate anything and its scores on the
    reals go negative (E[sign] ~ -0.9), so p falls (measured: all 16 updates down; asserted:
    12). The transforms are switched off (multipliers 0) so p does not feed back into D. A
    wrong sign of the statistic turns either case around. p is read from stats.jsonl.
    Each update moves p by exactly 32 / (ada_kimg * 1000) (no clamp is reached), so p - 0.5 is
    a whole number of updates (to 1e-9: float64 sums of 16 terms)."""
    loss = {"kind": "logistic-r1", "r1_gamma": 0.1} if case == "overfits" else \
        {"kind": "logistic-r1", "r1_gamma": 1e4, "r1_interval": 0}
    cfg = tiny_cfg(tmp_path, {
        "loss": loss,
        "augment": {"mode": "ada", "p": 0.5, "ada_kimg": 2.0, "interval": 4, **NO_OPS},
        "data": {"path": str(four_image_dataset)},
        "schedule": {"lr": 0.01, "stab_kimg": 10.0},
        "train": {"total_kimg": 0.512, "tick_kimg": 0.064}})
    assert make_trainer(cfg).run() == 0
    with open(tmp_path / "stats.jsonl") as f:
        ticks = [json.loads(line) for line in f]
    ps = [(tk["cur_nimg"], tk["Augment/p"]) for tk in ticks]
    assert ps[0] == (0, 0.5) and ps[-1][0] == 512
    updates = [(p - 0.5) / ADA_STEP for _n, p in ps]
    assert all(abs(u - round(u)) < 1e-9 for u in updates), updates
    net = round(updates[-1])
    if case == "overfits":
        assert net >= 4, f"p did not rise while D overfits: {ps}"
    else:
        assert net <= -12, f"p did not fall while D cannot fit: {ps}"
