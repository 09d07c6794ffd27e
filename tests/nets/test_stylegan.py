"""StyleGAN-style generator: shapes per stage, D(G(z)) training step, fade-in exactness,
truncation, style mixing, w_avg tracking, snapshots."""
import dataclasses

import pytest
import torch

from pggan.config import ModelConfig, load_preset, validate
from pggan.nets import build_discriminator, build_generator
from pggan.nets.stylegan import (StyleConv, StyleGenerator, StyleToRGB, conv_w_indices,
                                 num_ws_at, torgb_w_index)
from pggan.ops import upsample2d
from pggan.snapshot import load_snapshot, save_snapshot

STAGES = [4, 8, 16, 32]


@pytest.fixture(autouse=True)
def _one_thread():
    """These nets are tiny: intra-op threads only add synchronisation (on shared cores a 2-thread
    16-channel conv measured 60x slower than 1 thread), so run this file single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(arch="stylegan", max_res=32, img_channels=3, latent_dim=16, fmap_base=64,
                fmap_max=16, w_dim=16, mapping_layers=2)
    base.update(kw)
    return ModelConfig(**base)


def randomize_noise_strength(G: StyleGenerator) -> None:
    """Noise strengths start at 0; make them matter so the noise modes are really exercised."""
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, StyleConv) and m.use_noise:
                m.noise_strength.fill_(0.5)


def test_num_ws_layout():
    assert [num_ws_at(r) for r in (4, 8, 1024)] == [2, 4, 18]      # StyleGAN: 18 at 1024
    # Every conv and toRGB reads one index; indices grow with depth and fill 0..num_ws-1.
    used = set()
    for r in [2 ** k for k in range(2, 11)]:
        used.update(conv_w_indices(r))
        used.add(torgb_w_index(r))
        assert max(used) == num_ws_at(r) - 1
    assert used == set(range(18))


@pytest.mark.parametrize("modulation,num_classes,channels",
                         [("demod", 0, 3), ("adain", 0, 1), ("demod", 5, 3)])
def test_shapes_every_stage(modulation, num_classes, channels):
    cfg = tiny_cfg(modulation=modulation, num_classes=num_classes, img_channels=channels)
    G = build_generator(cfg)
    assert isinstance(G, StyleGenerator) and G.num_ws == num_ws_at(32)
    z = torch.randn(3, cfg.latent_dim)
    c = torch.tensor([0, 4, 2]) if num_classes else None
    ws = G.mapping(z, c)
    assert ws.shape == (3, num_ws_at(32), cfg.w_dim)
    for res in STAGES:
        for alpha in (0.0, 0.5, 1.0):
            img = G(z, c, res=res, alpha=alpha)
            assert img.shape == (3, channels, res, res)
            assert torch.isfinite(img).all()
        # synthesis accepts exactly the styles the stage reads, or one w per sample
        assert G.synthesis(ws[:, :num_ws_at(res)], res=res).shape == (3, channels, res, res)
        assert G.synthesis(ws[:, 0], res=res).shape == (3, channels, res, res)
    with pytest.raises(ValueError, match="not a stage"):
        G(z, c, res=64)
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(ws[:, :3], res=16)                              # 16 needs 6 styles
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, c, res=8, noise_mode="fixed")
    if num_classes:
        with pytest.raises(ValueError, match="class-conditional"):
            G(z)
        with pytest.raises(ValueError, match="out of range"):
            G(z, torch.tensor([0, 5, 1]))


@pytest.mark.parametrize("modulation", ["demod", "adain"])
def test_train_step_through_discriminator(modulation):
    """D(G(z)) forward + backward at every stage: exactly the parameters of
    G.stage_modules(res) receive (finite) gradients, with style mixing and random noise."""
    cfg = tiny_cfg(modulation=modulation, style_mixing_prob=1.0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    G.train()
    z = torch.randn(4, cfg.latent_dim)
    for res in STAGES:
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        img = G(z, res=res, alpha=0.5)
        loss = torch.nn.functional.softplus(-D(img, alpha=0.5)).mean()
        loss.backward()
        stage = {id(p) for m in G.stage_modules(res) for p in m.parameters()}
        for name, p in G.named_parameters():
            if id(p) in stage:
                assert p.grad is not None, f"{name} got no gradient at res {res}"
                assert torch.isfinite(p.grad).all()
            else:
                assert p.grad is None, f"{name} is outside stage {res} but got a gradient"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


@pytest.mark.parametrize("modulation", ["demod", "adain"])
@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_fade_in_exact_at_alpha_zero(modulation, noise_mode):
    G = build_generator(tiny_cfg(modulation=modulation)).eval()
    randomize_noise_strength(G)
    z = torch.randn(4, 16)
    for res in STAGES[1:]:
        grown = G(z, res=res, alpha=0.0, noise_mode=noise_mode)
        half = G(z, res=res // 2, alpha=1.0, noise_mode=noise_mode)
        assert (grown - upsample2d(half, mode="nearest")).abs().max().item() <= 1e-6
        # and the new block really is faded in above alpha = 0
        full = G(z, res=res, alpha=1.0, noise_mode=noise_mode)
        assert (full - upsample2d(half, mode="nearest")).abs().max().item() > 1e-3


def test_noise_modes():
    G = build_generator(tiny_cfg()).eval()
    randomize_noise_strength(G)
    z = torch.randn(2, 16)
    const = [G(z, res=16, noise_mode="const") for _ in range(2)]
    rand = [G(z, res=16, noise_mode="random") for _ in range(2)]
    none = G(z, res=16, noise_mode="none")
    assert torch.equal(const[0], const[1])
    assert (rand[0] - rand[1]).abs().max() > 1e-3                   # fresh noise per call
    assert (const[0] - none).abs().max() > 1e-3
    G_nn = build_generator(tiny_cfg(use_noise=False)).eval()
    assert not any("noise" in n for n, _ in G_nn.named_parameters())
    assert torch.equal(G_nn(z, res=16, noise_mode="random"), G_nn(z, res=16, noise_mode="const"))


def test_w_avg_tracking_and_truncation():
    cfg = tiny_cfg(w_avg_beta=0.9)
    G = build_generator(cfg)
    G.train()
    assert torch.equal(G.w_avg, torch.zeros(cfg.w_dim))
    expected = torch.zeros(cfg.w_dim)
    for _ in range(3):
        z = torch.randn(8, cfg.latent_dim)
        w = G.mapping(z, update_w_avg=False)[:, 0]                  # [N, w_dim]
        G.mapping(z)
        expected = 0.9 * expected + 0.1 * w.mean(dim=0)
        torch.testing.assert_close(G.w_avg, expected, rtol=1e-6, atol=1e-7)
    assert G.w_avg.abs().max() > 1e-3
    G.eval()
    w_avg = G.w_avg.clone()
    z = torch.randn(6, cfg.latent_dim)                               # six "seeds"
    G(z, res=32, noise_mode="const")
    assert torch.equal(G.w_avg, w_avg)                              # eval never updates it

    ws = G.mapping(z, truncation_psi=0.0)
    assert torch.equal(ws, w_avg.expand_as(ws))                     # psi = 0: w_avg, every seed
    img = G(z, res=32, truncation_psi=0.0, noise_mode="const")
    assert (img - img[:1]).abs().max() <= 1e-6                      # so one image for all seeds
    # psi = 0.5 halves the distance to w_avg; a cutoff truncates only the first layers
    w = G.mapping(z)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.5), w_avg + 0.5 * (w - w_avg))
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=3)
    assert torch.equal(cut[:, :3], w_avg.expand(6, 3, -1))
    assert torch.equal(cut[:, 3:], w[:, 3:])


def _record_layer_outputs(G, ws, res):
    """{(kind, res, w index): output} for every style conv and toRGB of stage `res`."""
    outputs, hooks = {}, []
    for m_name, m in G.named_modules():
        if isinstance(m, StyleConv):
            r = m.res
            if m_name.startswith("input"):
                idx = conv_w_indices(4)[0]
            else:
                idx = conv_w_indices(r)[0 if m_name.endswith("conv0") else 1]
        elif isinstance(m, StyleToRGB):
            r = int(m_name.split(".")[-1])
            idx = torgb_w_index(r)
        else:
            continue
        key = (type(m).__name__, r, idx)
        hooks.append(m.register_forward_hook(
            lambda _m, _i, out, key=key: outputs.__setitem__(key, out.detach().clone())))
    try:
        G.synthesis(ws, res=res, alpha=0.5, noise_mode="const")
    finally:
        for h in hooks:
            h.remove()
    return outputs


@pytest.mark.parametrize("modulation", ["demod", "adain"])
def test_style_mixing_changes_only_later_layers(modulation):
    """ws[:, :k] from one latent, ws[:, k:] from another: every layer reading a style index
    below k computes bit-identical outputs, every conv at index >= k changes."""
    G = build_generator(tiny_cfg(modulation=modulation)).eval()
    randomize_noise_strength(G)
    n_ws = num_ws_at(32)
    ws_a = G.mapping(torch.randn(2, 16))
    ws_b = G.mapping(torch.randn(2, 16))
    base = _record_layer_outputs(G, ws_a, 32)
    assert len(base) == 7 + 2                                       # 7 convs, toRGB 32 and 16
    for k in range(1, n_ws):
        mixed = _record_layer_outputs(G, torch.cat([ws_a[:, :k], ws_b[:, k:]], dim=1), 32)
        for key, out in base.items():
            kind, _r, idx = key
            if idx < k:
                assert torch.equal(mixed[key], out), f"{key} changed at cutoff {k}"
            elif kind == "StyleConv" or modulation == "demod":
                # (AdaIN's toRGB reads no style; it changes only if its input does.)
                assert (mixed[key] - out).abs().max() > 1e-4, f"{key} unchanged at cutoff {k}"


def test_style_mixing_regularisation_in_training():
    """forward() in training mode mixes with probability style_mixing_prob, at a cutoff among
    the layers active at `res`, with the w of a fresh latent; eval mode never mixes; the
    global torch RNG drives it; the second latent leaves w_avg alone."""
    res = 16
    n_active = num_ws_at(res)
    for prob, expect_rate in ((1.0, 1.0), (0.5, 0.5), (0.0, 0.0)):
        G = build_generator(tiny_cfg(style_mixing_prob=prob))
        seen = []
        G.synthesis = lambda ws, res, alpha, noise_mode: seen.append(ws.detach().clone())
        z = torch.randn(3, 16)
        w = G.mapping(z, update_w_avg=False)                        # [3, num_ws, w_dim]
        cutoffs, n_calls = [], 200
        torch.manual_seed(123)
        G.train()
        for _ in range(n_calls):
            w_avg_before = G.w_avg.clone()
            G(z, res=res)
            ws = seen[-1]
            torch.testing.assert_close(G.w_avg, (0.995 * w_avg_before + 0.005 * w[:, 0].mean(0)))
            same = [(ws[:, i] == w[:, i]).all().item() for i in range(ws.shape[1])]
            if all(same):
                continue
            k = same.index(False)
            assert all(same[:k]) and not any(same[k:])             # a prefix from z, rest not
            assert 1 <= k < n_active
            assert (ws[:, k:] == ws[:, k:k + 1]).all()             # one other w for the rest
            cutoffs.append(k)
        rate = len(cutoffs) / n_calls
        assert abs(rate - expect_rate) <= 0.1, (prob, rate)
        if prob == 1.0:
            assert set(cutoffs) == set(range(1, n_active))          # every cutoff occurs
        G.eval()
        G(z, res=res)
        assert torch.equal(seen[-1], w)
    # the same seed gives the same mixing
    G = build_generator(tiny_cfg(style_mixing_prob=0.5)).train()
    z = torch.randn(2, 16)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(torch.stack([G(z, res=8, noise_mode="none") for _ in range(4)]))
    assert torch.equal(outs[0], outs[1])


def test_bf16_autocast_forward():
    G = build_generator(tiny_cfg()).eval()
    z = torch.randn(2, 16)
    ref = G(z, res=16, noise_mode="const")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = G(z, res=16, noise_mode="const")
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_snapshot_round_trip(tmp_path):
    cfg = tiny_cfg(num_classes=3)
    G = build_generator(cfg)
    G.train()
    G.mapping(torch.randn(8, 16), torch.arange(8) % 3)              # non-zero w_avg
    G.eval()
    randomize_noise_strength(G)
    save_snapshot(tmp_path / "snap.pt", G, cfg, res=16, alpha=0.25, cur_nimg=1234)
    G2, data = load_snapshot(tmp_path / "snap.pt")
    assert isinstance(G2, StyleGenerator) and data["res"] == 16
    assert torch.equal(G2.w_avg, G.w_avg)
    z, c = torch.randn(3, 16), torch.tensor([0, 1, 2])
    for psi in (1.0, 0.7):
        assert torch.equal(G2(z, c, res=16, alpha=0.25, truncation_psi=psi, noise_mode="const"),
                           G(z, c, res=16, alpha=0.25, truncation_psi=psi, noise_mode="const"))


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="mapping_layers"):
        StyleGenerator(tiny_cfg(mapping_layers=0))
    with pytest.raises(ValueError, match="modulation"):
        StyleGenerator(tiny_cfg(modulation="wavelet"))


def test_preset_stylegan_ffhq_1024():
    cfg = validate(load_preset("stylegan-ffhq-1024"))
    m = cfg.model
    assert (m.arch, m.max_res, m.mapping_layers, m.mapping_lr_mult) == ("stylegan", 1024, 8, 0.01)
    assert (m.style_mixing_prob, m.modulation, m.fir_filter) == (0.9, "demod", [1, 3, 3, 1])
    assert (cfg.loss.kind, cfg.loss.r1_gamma) == ("logistic-r1", 10.0)
    # the preset's network builds (at a small size here) and holds 18 styles at 1024
    small = dataclasses.replace(m, max_res=16, fmap_base=64, fmap_max=16, w_dim=16,
                                latent_dim=16)
    assert build_generator(small)(torch.randn(1, 16)).shape == (1, 3, 16, 16)
    assert num_ws_at(m.max_res) == 18
