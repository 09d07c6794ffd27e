"""A whole PGGAN D step (WGAN-GP with its gradient penalty and drift) and G step with every fused
op on its Triton kernels (interpreter) must match the same step on the references: losses and
every parameter gradient; likewise a StyleGAN-style G step. The nets are tiny; the fade-in is
active (alpha = 0.5) so fade_in runs in both G and D, and the batch of 6 uses minibatch-stddev's
group fallback (4 -> 3)."""
import pytest
import torch

from pggan.config import ModelConfig
from pggan.nets import build_discriminator, build_generator
from triton_op_checks import needs_interpreter

pytestmark = needs_interpreter

RES, ALPHA, BATCH = 16, 0.5, 6
GP_LAMBDA, DRIFT_EPS = 10.0, 1e-3


def _nets(impl):
    cfg = ModelConfig(max_res=16, fmap_base=64, fmap_max=16, latent_dim=16, impl=impl)
    torch.manual_seed(1)
    return build_generator(cfg), build_discriminator(cfg)


def _wgan_gp_d_loss(G, D, z, reals, mix):
    """WGAN-GP (Gulrajani et al. 2017) + PGGAN's drift term, written out here on purpose."""
    with torch.no_grad():
        fakes = G(z, res=RES, alpha=ALPHA)
    d_real = D(reals, alpha=ALPHA)                                  # [N, 1]
    d_fake = D(fakes, alpha=ALPHA)
    x_hat = (mix * reals + (1 - mix) * fakes).requires_grad_(True)  # [N, C, H, W]
    d_hat = D(x_hat, alpha=ALPHA)
    grad, = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1.0).square()          # [N]
    loss = (d_fake - d_real).mean() + GP_LAMBDA * penalty.mean() \
        + DRIFT_EPS * d_real.square().mean()
    return loss, penalty.mean()


def _step(impl, z, reals, mix):
    G, D = _nets(impl)
    d_loss, penalty = _wgan_gp_d_loss(G, D, z, reals, mix)
    d_loss.backward()
    d_grads = {n: p.grad.clone() for n, p in D.named_parameters() if p.grad is not None}
    D.zero_grad(set_to_none=True)
    g_loss = -D(G(z, res=RES, alpha=ALPHA), alpha=ALPHA).mean()
    g_loss.backward()
    g_grads = {n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}
    return d_loss.detach(), penalty.detach(), g_loss.detach(), d_grads, g_grads


@pytest.fixture(scope="module")
def steps():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(BATCH, 16, generator=gen)
    reals = torch.randn(BATCH, 3, RES, RES, generator=gen)
    mix = torch.rand(BATCH, 1, 1, 1, generator=gen)
    return _step("triton", z, reals, mix), _step("ref", z, reals, mix)


def test_triton_is_really_used():
    G, D = _nets("triton")
    z = torch.randn(2, 16, requires_grad=True)
    img = G(z, res=RES, alpha=ALPHA)
    names = set()
    stack = [img.grad_fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        names.add(type(node).__name__)
        stack += [f for f, _ in node.next_functions]
    assert {"_BiasActBackward", "_PixelNormBackward", "_FadeInBackward"} <= names, names


def assert_grads_close(got: dict, want: dict, net: str) -> None:
    """Same parameter names (more than 10) and gradients within 1e-5 abs / 1e-4 rel."""
    assert got.keys() == want.keys() and len(want) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{net} grad {name}: {m}")


def test_d_step_with_gradient_penalty_matches(steps):
    (d_loss_t, pen_t, _, d_grads_t, _), (d_loss_r, pen_r, _, d_grads_r, _) = steps
    assert pen_r > 0.1                                             # the penalty is not trivially 0
    torch.testing.assert_close(d_loss_t, d_loss_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pen_t, pen_r, atol=1e-5, rtol=1e-5)
    assert_grads_close(d_grads_t, d_grads_r, "D")


def test_g_step_matches(steps):
    (_, _, g_loss_t, _, g_grads_t), (_, _, g_loss_r, _, g_grads_r) = steps
    torch.testing.assert_close(g_loss_t, g_loss_r, atol=1e-6, rtol=1e-5)
    assert_grads_close(g_grads_t, g_grads_r, "G")


def test_gradient_penalty_depends_on_the_double_backward(steps):
    # Guard against a double backward that silently drops terms: the D gradients with and
    # without the penalty differ clearly, so the match above is a check of the penalty path.
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(BATCH, 16, generator=gen)
    reals = torch.randn(BATCH, 3, RES, RES, generator=gen)
    G, D = _nets("triton")
    with torch.no_grad():
        fakes = G(z, res=RES, alpha=ALPHA)
    (D(fakes, alpha=ALPHA) - D(reals, alpha=ALPHA)).mean().backward()
    plain = {n: p.grad.clone() for n, p in D.named_parameters() if p.grad is not None}
    with_gp = steps[0][3]
    diff = max((with_gp[n] - plain[n]).abs().max().item() for n in plain)
    assert diff > 1e-3


def test_stylegan_g_step_matches():
    # The StyleGAN-style generator runs noise_bias_act, demod_coefficients, bias_act, pixel_norm
    # and fade_in; non-saturating logistic G loss through the PGGAN D.
    grads, losses = {}, {}
    for impl in ("triton", "ref"):
        cfg = ModelConfig(arch="stylegan", max_res=16, fmap_base=64, fmap_max=16, latent_dim=16,
                          w_dim=16, mapping_layers=2, style_mixing_prob=0.0, impl=impl)
        torch.manual_seed(3)
        G, D = build_generator(cfg), build_discriminator(cfg)
        with torch.no_grad():
            for name, p in G.named_parameters():
                if name.endswith("noise_strength"):
                    p.fill_(0.5)                                   # make the noise matter
        z = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(4))
        img = G(z, res=RES, alpha=ALPHA, noise_mode="const")
        loss = torch.nn.functional.softplus(-D(img, alpha=ALPHA)).mean()
        loss.backward()
        losses[impl] = loss.detach()
        grads[impl] = {n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}
    torch.testing.assert_close(losses["triton"], losses["ref"], atol=1e-6, rtol=1e-5)
    assert grads["triton"].keys() == grads["ref"].keys()
    assert any(n.endswith("noise_strength") for n in grads["ref"])
    for name in grads["ref"]:
        torch.testing.assert_close(grads["triton"][name], grads["ref"][name], atol=1e-5,
                                   rtol=1e-4, msg=lambda m: f"G grad {name}: {m}")
