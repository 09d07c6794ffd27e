"""AugmentPipe: identity at p = 0, per-sample probabilities, differentiability (gradients reach
G), ADA's p dynamics against a D that does / does not overfit, and p across a resume."""
import dataclasses
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pggan.config import AugmentConfig
from pggan.data.augment import AugmentPipe

NO_TRANSFORMS = dict(xflip=0.0, translate=0.0, rotate=0.0, scale=0.0, color=0.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def only(name: str, p: float = 1.0, channels: int = 3) -> AugmentPipe:
    """A fixed-p pipe with a single transform enabled."""
    cfg = AugmentConfig(mode="fixed", p=p, **{**NO_TRANSFORMS, name: 1.0})
    return AugmentPipe(cfg, channels)


def test_identity_at_p_zero_and_off():
    x = torch.randn(4, 3, 8, 8)
    assert AugmentPipe(AugmentConfig(mode="ada", p=0.0), 3)(x) is x
    assert AugmentPipe(AugmentConfig(mode="off", p=0.7), 3)(x) is x
    y = AugmentPipe(AugmentConfig(mode="fixed", p=1.0), 3)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    # bf16 in, bf16 out
    assert AugmentPipe(AugmentConfig(mode="fixed", p=1.0), 3)(x.bfloat16()).dtype == torch.bfloat16


def test_randomness_from_global_rng():
    pipe = AugmentPipe(AugmentConfig(mode="fixed", p=0.6), 3)
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(11)
    a = pipe(x)
    torch.manual_seed(11)
    b = pipe(x)
    torch.manual_seed(12)
    c = pipe(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_xflip_exact_and_per_sample_probability():
    x = torch.randn(2000, 1, 2, 4)
    y = only("xflip", p=1.0, channels=1)(x)
    assert torch.equal(y, x.flip(-1))
    y = only("xflip", p=0.3, channels=1)(x)
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert (flipped | kept).all()
    assert 0.25 <= flipped.float().mean().item() <= 0.35            # Bernoulli(0.3) per sample
    # the multiplier scales p: 0.5 * 0.6 = 0.3
    cfg = AugmentConfig(mode="fixed", p=0.6, **{**NO_TRANSFORMS, "xflip": 0.5})
    y = AugmentPipe(cfg, 1)(x)
    rate = torch.tensor([not torch.equal(y[i], x[i]) for i in range(len(x))]).float().mean()
    assert 0.25 <= rate.item() <= 0.35


def test_translation_is_whole_pixels():
    x = torch.randn(64, 3, 16, 16)
    y = only("translate")(x)
    shifts = set()
    for i in range(len(x)):
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i, :, 2:-2, 2:-2],
                                torch.roll(x[i], (dy, dx), (1, 2))[:, 2:-2, 2:-2])]
        assert match, f"sample {i} is not a whole-pixel shift of its input"
        shifts.add(match[0])
    assert len(shifts) > 5                                          # and the shifts vary


def test_colour_is_not_clamped():
    """Images live in [-1, 1]; kornia's colour ops would clamp to [0, 1] and cut gradients."""
    x = torch.full((16, 3, 4, 4), -0.9)
    x[:, 1] = 0.5
    y = only("color")(x)
    assert y.min() < -0.5                                           # negatives survive
    g = torch.autograd.grad(only("color")(x.requires_grad_()).sum(), x)[0]
    assert (g != 0).all()


def test_grayscale_pipe_has_no_saturation():
    pipe = AugmentPipe(AugmentConfig(mode="fixed", p=1.0), 1)
    assert "saturation" not in repr(pipe)
    assert pipe(torch.randn(4, 1, 8, 8)).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        pipe(torch.randn(4, 3, 8, 8))


def test_gradients_exact_through_the_whole_pipe():
    """For fixed random parameters every transform is affine in the image, so autograd's
    gradient must match finite differences exactly (float64 gradcheck)."""
    pipe = AugmentPipe(AugmentConfig(mode="fixed", p=1.0), 3)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)

    def f(img):
        torch.manual_seed(3)                                        # same draws every call
        return pipe(img)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_reach_the_generator():
    G = nn.Linear(8, 3 * 16 * 16)
    D = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1))
    pipe = AugmentPipe(AugmentConfig(mode="fixed", p=1.0), 3)
    fake = G(torch.randn(4, 8)).reshape(4, 3, 16, 16)
    F.softplus(-D(pipe(fake))).mean().backward()
    assert G.weight.grad is not None and torch.isfinite(G.weight.grad).all()
    assert G.weight.grad.abs().sum() > 0


def test_adjust_rule():
    cfg = AugmentConfig(mode="ada", p=0.2, target=0.6, ada_kimg=10)
    pipe = AugmentPipe(cfg, 3)
    pipe.adjust(0.9, 1000)                                          # overfitting: +1000/10000
    assert pipe.p == pytest.approx(0.3, abs=1e-12)
    pipe.adjust(0.1, 500)
    assert pipe.p == pytest.approx(0.25, abs=1e-12)
    pipe.adjust(0.6, 5000)                                          # on target: no change
    assert pipe.p == pytest.approx(0.25, abs=1e-12)
    pipe.adjust(-1.0, 10 ** 6)
    assert pipe.p == 0.0                                            # clamped below
    pipe.adjust(1.0, 10 ** 6)
    assert pipe.p == 1.0                                            # and above
    fixed = AugmentPipe(dataclasses.replace(cfg, mode="fixed"), 3)
    fixed.adjust(1.0, 10 ** 6)
    assert fixed.p == 0.2
    with pytest.raises(ValueError, match="finite"):
        pipe.adjust(float("nan"), 10)


def _train_d(pipe: AugmentPipe, tiny_real_set: bool, steps: int = 160, batch: int = 16,
             interval: int = 4) -> list:
    """Train a small D on (augmented) reals vs fakes from the real distribution itself and run
    ADA's update every `interval` steps; returns p after each update."""
    D = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    opt = torch.optim.Adam(D.parameters(), lr=3e-3, betas=(0.0, 0.99))
    sample = lambda n: torch.randn(n, 3, 8, 8).clamp(-2, 2) * 0.5  # noqa: E731
    real_set = sample(4)
    signs, history = [], []
    for step in range(steps):
        reals = real_set[torch.randint(0, 4, (batch,))] if tiny_real_set else sample(batch)
        d_real, d_fake = D(pipe(reals)), D(pipe(sample(batch)))
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        signs.append(d_real.detach().sign().mean().item())
        if (step + 1) % interval == 0:
            pipe.adjust(sum(signs) / len(signs), batch * interval)
            signs = []
            history.append(pipe.p)
    return history


def test_p_rises_when_d_overfits_a_tiny_real_set():
    torch.manual_seed(0)
    pipe = AugmentPipe(AugmentConfig(mode="ada", p=0.0, ada_kimg=2.0), 3)
    history = _train_d(pipe, tiny_real_set=True)
    # D memorises the 4 real images, E[sign(D(real))] -> 1 > 0.6: p grows until augmentation
    # holds D back near the target.
    assert history[-1] >= 0.2
    assert max(history[-10:]) > max(history[:5])


def test_p_falls_when_d_does_not_overfit():
    torch.manual_seed(0)
    pipe = AugmentPipe(AugmentConfig(mode="ada", p=0.5, ada_kimg=2.0), 3)
    history = _train_d(pipe, tiny_real_set=False)
    # reals and fakes come from one distribution: D cannot tell them apart, its sign on reals
    # averages well below 0.6, and p decays to 0.
    assert history[-1] == 0.0
    steps = [b - a for a, b in zip(history, history[1:]) if b != a]
    assert sum(s < 0 for s in steps) >= 0.8 * len(steps)           # mostly downward moves


def test_p_survives_resume(tmp_path):
    pipe = AugmentPipe(AugmentConfig(mode="ada", p=0.0, ada_kimg=1.0), 3)
    for _ in range(7):
        pipe.adjust(1.0, 37)
    p = pipe.p
    assert p == pytest.approx(7 * 37 / 1000)
    assert list(pipe.state_dict()) == ["p_buf"]
    # through a file, as a checkpoint does, and nested inside a parent module
    holder = nn.Module()
    holder.augment = pipe
    buf = io.BytesIO()
    torch.save(holder.state_dict(), buf)
    buf.seek(0)
    restored = nn.Module()
    restored.augment = AugmentPipe(AugmentConfig(mode="ada", p=0.0, ada_kimg=1.0), 3)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.augment.p == p                                 # exact
    # and the restored pipe keeps adapting from there
    restored.augment.adjust(0.0, 100)
    assert restored.augment.p == pytest.approx(p - 0.1)
    # the restored p is what the pipe uses: at p = 1 all flips happen
    flipper = only("xflip", p=0.0, channels=1)
    flipper.load_state_dict({"p_buf": torch.tensor(1.0, dtype=torch.float64)})
    x = torch.randn(8, 1, 2, 2)
    assert torch.equal(flipper(x), x.flip(-1))


def test_bad_config():
    with pytest.raises(ValueError, match="augment.mode"):
        AugmentPipe(AugmentConfig(mode="sometimes"), 3)
    with pytest.raises(ValueError, match="ada_kimg"):
        AugmentPipe(AugmentConfig(mode="ada", ada_kimg=0.0), 3)
    with pytest.raises(ValueError, match="p must be in"):
        AugmentPipe(AugmentConfig(mode="fixed"), 3).p = 1.5
