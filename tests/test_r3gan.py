"""R3GAN (loss.kind r3gan): the relativistic pairing loss, R1 + R2 on every D step, its cosine
schedules, and the Triton path of its penalties."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from pggan.config import Config, ConfigError, Cosine, LossConfig, validate
from pggan.stats import Collector
from pggan.losses import (GANLoss, MicroBatch, d_adversarial, d_optimizer_ratio, g_adversarial,
                          make_phases, scores_and_grad_sq)
from pggan.ops._dispatch import interpreter_enabled, triton_available
from pggan.schedule import ResolutionSchedule, fade_ended_before


def test_pairing_losses_on_hand_computed_scores():
    real = torch.tensor([1.0, 0.0, -2.0])
    fake = torch.tensor([0.0, 2.0, -2.0])
    d = d_adversarial("r3gan", real, fake)
    want = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(2.0)), math.log(2.0)]
    assert d.tolist() == pytest.approx(want, rel=1e-6)
    g = g_adversarial("r3gan", fake, real)                      # mirror: softplus(r - f)
    assert g.tolist() == pytest.approx([math.log1p(math.exp(1.0)), math.log1p(math.exp(-2.0)),
                                        math.log(2.0)], rel=1e-6)
    # Shift invariant: only differences of the pairs count.
    assert torch.equal(d_adversarial("r3gan", real + 3, fake + 3), d)
    with pytest.raises(ValueError):
        g_adversarial("r3gan", fake)


class QuadD(torch.nn.Module):
    """D(x) = sum(w * x^2) + <v, x>: grad_x D = 2 w x + v, known in closed form."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]]))
        self.v = torch.nn.Parameter(torch.tensor([[[[1.0, 0.0], [-1.0, 3.0]]]]))

    def forward(self, x, c=None, alpha=1.0):
        return (self.w * x * x + self.v * x).flatten(1).sum(1, keepdim=True)


class PixelG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, z, c=None, res=None, alpha=1.0):
        return (z * self.scale).reshape(-1, 1, 2, 2)


def _batch(gamma=None):
    g = torch.Generator().manual_seed(3)
    return MicroBatch(real=torch.randn(4, 1, 2, 2, generator=g), real_c=None,
                      z=torch.randn(4, 4, generator=g), gp_eps=torch.rand(4, 1, 1, 1),
                      res=2, alpha=1.0, gamma=gamma)


def test_r1_r2_match_closed_form_and_autograd():
    D, mb = QuadD(), _batch()
    out, sq = scores_and_grad_sq(lambda x: D(x), mb.real)
    closed = (2 * D.w * mb.real + D.v).square().flatten(1).sum(1)
    torch.testing.assert_close(sq, closed.detach(), rtol=1e-6, atol=0)
    # The penalty is differentiable w.r.t. D's parameters (double backward): compare with
    # autograd on the closed form.
    sq.sum().backward()
    gw, gv = D.w.grad.clone(), D.v.grad.clone()
    D.zero_grad()
    closed.sum().backward()
    torch.testing.assert_close(gw, D.w.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gv, D.v.grad, rtol=1e-6, atol=1e-6)


def test_d_phase_is_pairing_loss_plus_half_gamma_r1_r2_every_step():
    cfg = LossConfig(kind="r3gan", r1_gamma=10.0)
    phases = make_phases(cfg)
    assert [(p.name, p.interval, p.gain) for p in phases] == [("D_main", 1, 1.0),
                                                              ("G_main", 1, 1.0)]
    G, D, mb = PixelG(), QuadD(), _batch(gamma=0.8)        # the schedule's gamma wins
    col = Collector()
    with col.active():
        out = GANLoss(cfg).phase_loss(phases[0], mb, G, lambda x, c, a: D(x, c, a),
                                      contextlib.nullcontext)
    fake = (mb.z * 0.5).reshape(-1, 1, 2, 2)
    r, f = D(mb.real)[:, 0], D(fake)[:, 0]
    grad_sq = lambda x: (2 * D.w * x + D.v).square().flatten(1).sum(1)     # noqa: E731
    want = (F.softplus(-(r - f)) + 0.8 / 2 * (grad_sq(mb.real) + grad_sq(fake))).mean()
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.ada_signal, (r - f).detach())
    stats = col.reduce()
    assert stats["Loss/D/r2"] == pytest.approx(grad_sq(fake).mean().item(), rel=1e-6)
    assert stats["Loss/D/r1"] == pytest.approx(grad_sq(mb.real).mean().item(), rel=1e-6)
    out.loss.backward()
    assert G.scale.grad is None                                    # fakes detached for D


def test_lazy_r1_r2_phases_split_the_terms_and_sum_to_the_every_step_loss():
    """loss.r1_interval 4: D_main is the pairing loss alone, D_reg every 4th step is
    4 * gamma/2 * (R1 + R2) (R2 on fakes of D_reg's latents), D's Adam gets the lazy ratio."""
    lazy = LossConfig(kind="r3gan", r1_gamma=2.0, r1_interval=4)
    phases = make_phases(lazy)
    assert [(p.name, p.interval, p.gain, p.r1, p.r2) for p in phases[:2]] == [
        ("D_main", 1, 1.0, False, False), ("D_reg", 4, 4.0, True, True)]
    assert d_optimizer_ratio(lazy) == 4 / 5
    assert d_optimizer_ratio(LossConfig(kind="r3gan", r1_gamma=2.0)) == 1.0   # paper: none
    G, D, mb = PixelG(), QuadD(), _batch()
    run = lambda x, c, a: D(x, c, a)                                          # noqa: E731
    main = GANLoss(lazy).phase_loss(phases[0], mb, G, run, contextlib.nullcontext)
    reg = GANLoss(lazy).phase_loss(phases[1], mb, G, run, contextlib.nullcontext)
    fake = (mb.z * 0.5).reshape(-1, 1, 2, 2)
    r, f = D(mb.real)[:, 0], D(fake)[:, 0]
    grad_sq = lambda x: (2 * D.w * x + D.v).square().flatten(1).sum(1)     # noqa: E731
    torch.testing.assert_close(main.loss, F.softplus(f - r).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(main.ada_signal, (r - f).detach())
    torch.testing.assert_close(reg.loss, 4 * (grad_sq(mb.real) + grad_sq(fake)).mean(),
                               rtol=1e-6, atol=0)
    every = GANLoss(LossConfig(kind="r3gan", r1_gamma=2.0))
    full = every.phase_loss(make_phases(every.cfg)[0], mb, G, run, contextlib.nullcontext)
    torch.testing.assert_close(main.loss + reg.loss / 4, full.loss, rtol=1e-6, atol=0)
    (gw,) = torch.autograd.grad(reg.loss, [D.w])               # R1 + R2 reach D's weights
    assert gw.abs().sum() > 0


def test_d_phase_parameter_gradients_equal_the_formula():
    cfg = LossConfig(kind="r3gan", r1_gamma=2.0)
    G, D, mb = PixelG(), QuadD(), _batch()
    out = GANLoss(cfg).phase_loss(make_phases(cfg)[0], mb, G, lambda x, c, a: D(x, c, a),
                                  contextlib.nullcontext)
    got = torch.autograd.grad(out.loss, [D.w, D.v])
    fake = (mb.z * 0.5).reshape(-1, 1, 2, 2)
    r, f = D(mb.real)[:, 0], D(fake)[:, 0]
    grad_sq = lambda x: (2 * D.w * x + D.v).square().flatten(1).sum(1)     # noqa: E731
    want = (F.softplus(f - r) + 1.0 * (grad_sq(mb.real) + grad_sq(fake))).mean()
    for a, b in zip(got, torch.autograd.grad(want, [D.w, D.v])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_g_phase_pairs_each_fake_with_its_real():
    cfg = LossConfig(kind="r3gan")
    G, D, mb = PixelG(), QuadD(), _batch()
    out = GANLoss(cfg).phase_loss(make_phases(cfg)[-1], mb, G, lambda x, c, a: D(x, c, a),
                                  contextlib.nullcontext)
    fake = (mb.z * G.scale).reshape(-1, 1, 2, 2)
    r, f = D(mb.real)[:, 0].detach(), D(fake)[:, 0]
    want = F.softplus(-(f - r)).mean()
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=0)
    (gs,) = torch.autograd.grad(out.loss, [G.scale])
    torch.testing.assert_close(gs, torch.autograd.grad(want, [G.scale])[0], rtol=1e-5, atol=0)
    # A permuted pairing gives another loss: the pairs are row by row.
    perm = F.softplus(-(f - r.flip(0))).mean()
    assert not torch.allclose(perm, want)


# ------------------------------------------------------------------------------- schedules


def test_cosine_at_endpoints_and_middle():
    c = Cosine(start=0.9, end=0.99, kimg=10)
    assert c.at(0) == pytest.approx(0.9)
    assert c.at(5000) == pytest.approx((0.9 + 0.99) / 2)
    assert c.at(2500) == pytest.approx(0.99 + (0.9 - 0.99) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert c.at(10_000) == pytest.approx(0.99) and c.at(1_000_000) == pytest.approx(0.99)
    assert not Cosine().active


def _cfg(**sections):
    cfg = Config()
    cfg.model.max_res = 16
    cfg.schedule.fade_kimg, cfg.schedule.stab_kimg = 4, 4
    cfg.schedule.batch_by_res = {4: 16, 8: 16, 16: 16}
    cfg.schedule.lr_by_res = {16: 0.004}
    cfg.train.total_kimg = 40
    cfg.loss.kind = "r3gan"
    cfg.schedule.lr_ramp = Cosine(0.002, 0.0005, 20)
    cfg.optim.beta2_ramp = Cosine(0.9, 0.99, 20)
    cfg.loss.gamma_ramp = Cosine(1.0, 0.1, 20)
    cfg.ema.ema_kimg_ramp = Cosine(0.0, 2.0, 20)
    cfg.augment.mode = "fixed"
    cfg.augment.p_ramp = Cosine(0.0, 0.3, 20)
    return validate(cfg)


def test_schedule_answers_every_ramp_as_a_pure_function_of_cur_nimg():
    s = ResolutionSchedule(_cfg())
    p0, mid, end = s.at(0), s.at(10_000), s.at(30_000)
    assert (p0.lr, p0.beta2, p0.gamma, p0.ema_kimg, p0.augment_p) == pytest.approx(
        (0.002, 0.9, 1.0, 0.0, 0.0))
    assert (mid.beta2, mid.gamma, mid.ema_kimg, mid.augment_p) == pytest.approx(
        (0.945, 0.55, 1.0, 0.15))
    assert mid.res == 8 and mid.lr == pytest.approx(0.00125)
    assert s.at(15_000).res == 16                                 # lr_by_res's ratio kept
    assert s.at(15_000).lr == pytest.approx(Cosine(0.002, 0.0005, 20).at(15_000) * 4)
    assert (end.lr, end.beta2, end.gamma, end.ema_kimg) == pytest.approx(
        (0.0005 * 4, 0.99, 0.1, 2.0))
    assert s.at(10_000) == mid                                    # pure: same answer again
    no_ramps = ResolutionSchedule(validate(Config()))
    q = no_ramps.at(0)
    assert (q.lr, q.beta2, q.gamma, q.ema_kimg, q.augment_p) == (0.001, 0.99, 10.0, 10.0, None)


def test_fade_end_is_found_once_per_stage():
    s = ResolutionSchedule(_cfg())
    firsts = [n for n in range(0, 40_000, 16) if fade_ended_before(s.at(n))]
    # 8x8 fades over [4000, 8000), 16x16 over [12000, 16000): the first stab steps.
    assert firsts == [8000, 16000]


@pytest.mark.parametrize("bad", ["schedule.lr_ramp", "optim.beta2_ramp", "augment.p_ramp"])
def test_bad_ramps_are_refused(bad):
    cfg = _cfg()
    section, name = bad.split(".")
    setattr(getattr(cfg, section), name, Cosine(start=-1.0, end=2.0, kimg=5))
    with pytest.raises(ConfigError, match=bad):
        validate(cfg)
    cfg = _cfg()
    cfg.augment.mode = "ada"
    with pytest.raises(ConfigError, match="augment.p_ramp needs augment.mode fixed"):
        validate(cfg)


# ------------------------------------------------------------------------ Triton penalties

@pytest.mark.skipif(not (triton_available() and interpreter_enabled()),
                    reason="needs triton and TRITON_INTERPRET=1 (set by tests/conftest.py)")
def test_triton_penalties_equal_the_reference():
    """R1 + R2 through a PGGAN D whose fused ops run on their Triton kernels (interpreter):
    loss and every D gradient (a double backward through bias_act, minibatch_std, pixel
    norm and fade_in) equal the reference path."""
    from pggan.config import ModelConfig
    from pggan.nets import build_discriminator, build_generator
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(6, 16, generator=gen)
    reals = torch.randn(6, 3, 8, 8, generator=gen).clamp(-1, 1)
    results = {}
    for impl in ("triton", "ref"):
        cfg = ModelConfig(max_res=8, fmap_base=64, fmap_max=16, latent_dim=16, impl=impl)
        torch.manual_seed(1)
        G, D = build_generator(cfg), build_discriminator(cfg)
        loss = GANLoss(LossConfig(kind="r3gan", r1_gamma=1.0))
        mb = MicroBatch(real=reals, real_c=None, z=z, gp_eps=torch.zeros(6, 1, 1, 1), res=8,
                        alpha=0.5)
        out = loss.phase_loss(make_phases(loss.cfg)[0], mb, G, lambda x, c, a: D(x, c, a),
                              contextlib.nullcontext)
        out.loss.backward()
        results[impl] = (out.loss.detach(),
                         {n: p.grad.clone() for n, p in D.named_parameters()
                          if p.grad is not None})
    (lt, gt), (lr, gr) = results["triton"], results["ref"]
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=1e-6)
    assert gt.keys() == gr.keys() and len(gt) > 4
    for n in gt:
        torch.testing.assert_close(gt[n], gr[n], rtol=1e-4, atol=1e-5, msg=n)
