"""Every LossConfig field at a non-default value changes the training loss as its formula says,
through the real loop: three steps of the tiny preset run by `Trainer.run()`, with every call
of G and D (inputs, outputs) and every Adam step (the gradient about to be applied, both
networks' weights) recorded (loopkit.py). For each optimizer step the loss is computed again
here, from the formulas written out below and the recorded inputs, on copies of the networks
holding the recorded weights, and its gradient must equal the one the loop applied.

Formulas (per sample, then the mean over the batch; r = D(real), f = D(fake); pggan/losses.py):
  wgan-gp      D: f - r + drift_eps r^2 + gp_lambda (|grad D(x_hat)| - gp_target)^2 / gp_target^2
               G: -f
  logistic-r1  D: softplus(f) + softplus(-r) [+ gamma/2 |grad_x D(real)|^2 when r1_interval 0]
               lazy (r1_interval k > 0): an extra D step every k steps on k gamma/2 |grad D(real)|^2
               G: softplus(-f)
  r3gan        D: softplus(f - r) + gamma/2 (|grad D(real)|^2 + |grad D(fake)|^2), row i with row i
               G: softplus(r - f)
  lsgan        D: ((r - 1)^2 + f^2) / 2,  G: (f - 1)^2 / 2
  hinge        D: relu(1 - r) + relu(1 + f),  G: -f
  acgan        + acgan_weight CE(class logits, label) on reals and fakes (D) and on fakes (G)
  gamma_ramp   gamma = end + (start - end) (1 + cos(pi min(nimg / (kimg 1000), 1))) / 2
  penalty_precision bf16: the penalty's D passes under bfloat16 autocast

The real images are the stream's (make_train_stream at cur_nimg 0, prepare_reals); which recorded
D call saw reals, fakes (a recorded G output) or the WGAN-GP interpolates is read from the
inputs' values, not from the order of the calls.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from loopkit import LoopRecorder, NetCall, OptStep, make_trainer, tiny_cfg
from pggan.data.reals import prepare_reals
from pggan.data.stream import make_train_stream

STEPS = 3

CASES = {
    "defaults (wgan-gp)": {},
    "gp_lambda": {"loss": {"gp_lambda": 2.5}},
    "gp_target": {"loss": {"gp_target": 3.0}},
    "drift_eps": {"loss": {"drift_eps": 0.5}},
    "penalty_precision": {"loss": {"penalty_precision": "bf16"}},
    "kind=logistic-r1, r1_interval=0": {"loss": {"kind": "logistic-r1", "r1_interval": 0}},
    "r1_gamma": {"loss": {"kind": "logistic-r1", "r1_interval": 0, "r1_gamma": 1.5}},
    "r1_interval": {"loss": {"kind": "logistic-r1", "r1_interval": 2, "r1_gamma": 4.0}},
    "kind=r3gan": {"loss": {"kind": "r3gan", "r1_gamma": 0.5}},
    "gamma_ramp": {"loss": {"kind": "r3gan",
                            "gamma_ramp": {"start": 2.0, "end": 0.25, "kimg": 0.016}}},
    "kind=lsgan": {"loss": {"kind": "lsgan"}},
    "kind=hinge": {"loss": {"kind": "hinge"}},
    "acgan_weight": {"loss": {"kind": "hinge", "acgan_weight": 3.0},
                     "model": {"num_classes": 2, "cond_d": "acgan"}},
}


def test_every_loss_field_has_a_case():
    """A field added to LossConfig needs a case here (and a formula above)."""
    import dataclasses
    from pggan.config import LOSS_KINDS, LossConfig
    covered = {k for over in CASES.values() for k in over.get("loss", {})}
    assert {f.name for f in dataclasses.fields(LossConfig)} == covered
    kinds = {over.get("loss", {}).get("kind", LossConfig().kind) for over in CASES.values()}
    assert kinds == set(LOSS_KINDS)


@pytest.fixture(scope="session")
def labelled_tiny_dataset(tmp_path_factory):
    """2 classes x 6 smooth RGB images, max-res 16 (the acgan case needs labels)."""
    import numpy as np
    from PIL import Image
    from data_prep.prepare import PrepOptions, prepare
    root = tmp_path_factory.mktemp("labelled-tiny")
    rng = np.random.RandomState(1)
    for cls in ("a", "b"):
        (root / "src" / cls).mkdir(parents=True)
        for i in range(6):
            yy, xx = np.mgrid[0:16, 0:16] / 16.0
            img = np.stack([rng.rand() * xx + rng.rand() * yy for _ in range(3)], -1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / "src" / cls / f"{i}.png")
    prepare(PrepOptions(source=str(root / "src"), out=str(root / "ds"), max_res=16,
                        labels="folders", workers=1, progress=False))
    return root / "ds"


def grad_sq(run, x):
    """|grad_x run(x)[:, 0]|^2 per sample [N] and run's output, differentiable (create_graph)."""
    x = x.detach().requires_grad_(True)
    out = run(x)
    (g,) = torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)
    return g.square().flatten(1).sum(1), out


def penalty_context(precision):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else \
        torch.autocast("cpu", enabled=False)


def gamma_at(loss, nimg):
    ramp = loss.gamma_ramp
    if ramp.kimg <= 0:
        return loss.r1_gamma
    u = min(nimg / (ramp.kimg * 1000.0), 1.0)
    return ramp.end + (ramp.start - ramp.end) * 0.5 * (1.0 + math.cos(math.pi * u))


def class_terms(loss, out, c):
    if out.shape[1] == 1:
        return 0.0
    return loss.acgan_weight * F.cross_entropy(out[:, 1:].float(), c, reduction="none")


def d_loss(loss, D, real, fake, c, others, nimg, alpha):
    """The D main step's loss (mean over the batch) on D's current weights."""
    run = lambda x: D(x, c, alpha)                                      # noqa: E731
    gamma = gamma_at(loss, nimg)
    kind = loss.kind
    if kind == "r3gan":
        with penalty_context(loss.penalty_precision):
            r1, out_r = grad_sq(run, real)
            r2, out_f = grad_sq(run, fake)
        r, f = out_r[:, 0].float(), out_f[:, 0].float()
        terms = F.softplus(f - r) + gamma / 2 * (r1.float() + r2.float())
    else:
        out_r, out_f = run(real), run(fake)
        r, f = out_r[:, 0], out_f[:, 0]
        if kind == "wgan-gp":
            assert len(others) == 1, "one WGAN-GP interpolate batch per D step"
            x_hat = others[0]
            # x_hat = real + eps (fake - real), one eps in [0, 1) per sample
            eps = ((x_hat - real).flatten(1) * (fake - real).flatten(1)).sum(1) / \
                (fake - real).flatten(1).square().sum(1)
            lerp = real + eps[:, None, None, None] * (fake - real)
            assert torch.allclose(x_hat, lerp, atol=1e-5), "x_hat is not real + eps (fake - real)"
            assert bool(((eps > -1e-6) & (eps < 1 + 1e-6)).all())
            with penalty_context(loss.penalty_precision):
                x = x_hat.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(run(x)[:, 0].float().sum(), x, create_graph=True)
            norm = g.float().flatten(1).norm(2, dim=1)
            t = loss.gp_target
            terms = f - r + loss.drift_eps * r.square() + \
                loss.gp_lambda * (norm - t).square() / t ** 2
        else:
            assert not others, f"{kind}: unexpected D inputs"
            if kind == "logistic-r1":
                terms = F.softplus(f) + F.softplus(-r)
                if loss.r1_interval == 0:
                    with penalty_context(loss.penalty_precision):
                        r1, _ = grad_sq(run, real)
                    terms = terms + gamma / 2 * r1.float()
            elif kind == "lsgan":
                terms = 0.5 * ((r - 1).square() + f.square())
            elif kind == "hinge":
                terms = F.relu(1 - r) + F.relu(1 + f)
            else:
                raise AssertionError(kind)
    terms = terms + class_terms(loss, out_r, c) + class_terms(loss, out_f, c)
    return terms.mean()


def d_reg_loss(loss, D, real, c, nimg, alpha):
    k = loss.r1_interval
    with penalty_context(loss.penalty_precision):
        r1, _ = grad_sq(lambda x: D(x, c, alpha), real)
    return k * (gamma_at(loss, nimg) / 2 * r1.float()).mean()


def g_loss(loss, G, D, z, c, real, res, alpha):
    fake = G(z, c, res, alpha)
    out = D(fake, c, alpha)
    f = out[:, 0]
    kind = loss.kind
    if kind in ("wgan-gp", "hinge"):
        terms = -f
    elif kind == "logistic-r1":
        terms = F.softplus(-f)
    elif kind == "lsgan":
        terms = 0.5 * (f - 1).square()
    elif kind == "r3gan":
        with torch.no_grad():
            r = D(real, c, alpha)[:, 0]
        terms = F.softplus(r - f)
    else:
        raise AssertionError(kind)
    return (terms + class_terms(loss, out, c)).mean()


def compare_grads(step: OptStep, net, loss_value, what, rtol):
    """The recorded gradient of every parameter against d loss_value / d param."""
    params = dict(net.named_parameters())
    names = sorted(step.grads)
    want = torch.autograd.grad(loss_value, [params[n] for n in names], allow_unused=True)
    scale = max(w.abs().max().item() for w in want if w is not None)
    assert scale > 0
    for n, w in zip(names, want):
        w = torch.zeros_like(params[n]) if w is None else w
        err = (step.grads[n] - w).abs().max().item()
        assert err <= rtol * scale, (f"{what}: gradient of {n} differs from the formula's by "
                                     f"{err:.3g} (largest gradient {scale:.3g}, rtol {rtol})")
    # No parameter the formula moves was left out.
    for n, p in params.items():
        if n not in step.grads:
            w = torch.autograd.grad(loss_value, p, allow_unused=True, retain_graph=True)[0]
            assert w is None or w.abs().max().item() == 0, f"{what}: {n} got no gradient"


@pytest.mark.parametrize("case", list(CASES))
def test_loss_field_changes_the_loss_as_its_formula_says(tmp_path, monkeypatch, one_thread,
                                                        labelled_tiny_dataset, case):
    """Gradients of 3 steps (D main, lazy R1 where due, G) against the formulas above.

    Tolerance: the formulas run the same float32 operations as the loop, on the same inputs
    and weights, so they differ by summation order only: a few units of float32 roundoff
    (6e-8) relative to the largest gradient, times the depth of the sums (measured: below
    1e-6). 1e-5 of the largest gradient is asserted; a field left at its default changes the
    gradient by tens of percent (penalty_precision bf16 vs fp32: ~1e-2, also asserted)."""
    over = copy.deepcopy(CASES[case])
    over.setdefault("train", {})["total_kimg"] = STEPS * 8 / 1000
    if "model" in over:
        over["data"] = {"path": str(labelled_tiny_dataset)}
    cfg = tiny_cfg(tmp_path, over)
    t = make_trainer(cfg)
    G_ref, D_ref = copy.deepcopy(t.G), copy.deepcopy(t.D)      # before any hook is added
    rec = LoopRecorder(t, monkeypatch, calls=True, tensors=True)
    assert t.run() == 0
    loss = cfg.loss
    stream = make_train_stream(cfg.data, 4, batch_per_gpu=8, seed=cfg.train.seed, rank=0,
                               world_size=1, start_nimg=0, img_channels=cfg.model.img_channels,
                               top_res=cfg.model.max_res)
    steps = rec.by_train_step()
    assert len(steps) == STEPS
    rtol = 1e-5
    for k, events in enumerate(steps):
        images, labels = next(stream)
        real = prepare_reals(images, 1.0, "cpu")
        c = labels if cfg.model.num_classes else None
        opt_steps = [e for e in events if isinstance(e, OptStep)]
        lazy = loss.kind == "logistic-r1" and loss.r1_interval > 0
        want_d = 2 if lazy and k % loss.r1_interval == 0 else 1
        assert [s.net for s in opt_steps] == ["D"] * want_d + ["G"], (k, [s.net for s in
                                                                          opt_steps])
        nimg = 8 * k
        block = []
        for e in events:
            if isinstance(e, NetCall):
                block.append(e)
                continue
            g_out = [b.out for b in block if b.net == "G"]
            d_in = [b.args[0] for b in block if b.net == "D"]
            for b in block:
                if b.net == "D" and cfg.model.num_classes:
                    assert torch.equal(b.args[1], labels), "D got other labels than the reals'"
            is_real = [torch.equal(x, real) for x in d_in]
            is_fake = [any(torch.equal(x, o) for o in g_out) for x in d_in]
            others = [x for x, a, b in zip(d_in, is_real, is_fake) if not (a or b)]
            what = f"{case}: step {k} {e.net}"
            if e.net == "D":
                D_ref.load_state_dict(e.params)
                D_ref.requires_grad_(True)
                if e is opt_steps[0]:
                    assert any(is_real), f"{what}: D never saw the stream's reals"
                    assert len(g_out) == 1 and any(is_fake), f"{what}: no fakes"
                    value = d_loss(loss, D_ref, real, g_out[0], c, others, nimg, 1.0)
                else:                                           # the lazy R1 step
                    assert not g_out and all(is_real), f"{what}: R1 step saw non-reals"
                    value = d_reg_loss(loss, D_ref, real, c, nimg, 1.0)
                compare_grads(e, D_ref, value, what, rtol)
                if loss.penalty_precision == "bf16" and e is opt_steps[0]:
                    fp32 = copy.deepcopy(loss)
                    fp32.penalty_precision = "fp32"
                    value32 = d_loss(fp32, D_ref, real, g_out[0], c, others, nimg, 1.0)
                    with pytest.raises(AssertionError, match="differs from the formula"):
                        compare_grads(e, D_ref, value32, what, 1e-3)
            else:
                G_ref.load_state_dict(e.params)
                D_ref.load_state_dict(e.other)
                G_ref.requires_grad_(True)
                g_calls = [b for b in block if b.net == "G"]
                assert len(g_calls) == 1, f"{what}: {len(g_calls)} G calls"
                z = g_calls[0].args[0]
                gc = g_calls[0].args[1] if len(g_calls[0].args) > 1 else None
                if cfg.model.num_classes:
                    assert torch.equal(gc, labels), "fakes do not use the reals' labels"
                value = g_loss(loss, G_ref, D_ref, z, gc, real, 4, 1.0)
                compare_grads(e, G_ref, value, what, rtol)
            block = []
