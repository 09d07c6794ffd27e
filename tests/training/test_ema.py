"""G_ema: half-life in images, ramp-up, only the active stage averaged, buffers copied."""
import copy

import pytest
import torch
import torch.nn as nn

from pggan.config import ModelConfig
from pggan.nets import build_generator
from pggan.training.ema import ema_beta, make_ema, module_names, update_ema


def test_half_life_is_in_images():
    # 10 kimg half-life, batch 32: after 10_000 images (312.5 steps) the old weight is halved.
    beta = ema_beta(cur_nimg=10 ** 9, batch=32, ema_kimg=10.0, ema_rampup=None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5, rel=1e-12)
    # The same half-life with another batch: the per-image decay is the same.
    beta64 = ema_beta(cur_nimg=10 ** 9, batch=64, ema_kimg=10.0, ema_rampup=None)
    assert beta64 == pytest.approx(beta ** 2, rel=1e-12)


def test_rampup_limits_the_half_life_early():
    # At cur_nimg = 1000 with rampup 0.05 the half-life is 50 images, not 10k.
    assert ema_beta(1000, 10, 10.0, 0.05) == pytest.approx(0.5 ** (10 / 50), rel=1e-12)
    assert ema_beta(0, 10, 10.0, 0.05) == 0.0          # first step: G_ema = G
    late = ema_beta(10 ** 7, 10, 10.0, 0.05)
    assert late == pytest.approx(0.5 ** (10 / 10_000), rel=1e-12)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)
        self.register_buffer("avg", torch.zeros(2))


def test_update_is_a_lerp_toward_g_for_the_named_modules_only():
    G = Tiny()
    ema = make_ema(G)
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    with torch.no_grad():
        for p in G.parameters():
            p.fill_(1.0)
        for p in ema.parameters():
            p.fill_(0.0)
        G.avg.fill_(3.0)
    for _ in range(3):
        update_ema(ema, G, beta=0.5, modules=["a"])
    assert torch.allclose(ema.a.weight, torch.full((2, 2), 1 - 0.5 ** 3))
    assert torch.equal(ema.b.weight, torch.zeros(2, 2))     # inactive: untouched
    assert torch.equal(ema.avg, torch.full((2,), 3.0))       # buffers copied
    update_ema(ema, G, beta=0.0)                             # all modules, beta 0: a copy
    assert torch.equal(ema.b.weight, G.b.weight)


def test_stage_module_names_cover_only_the_active_blocks():
    G = build_generator(ModelConfig(max_res=32, fmap_base=64, fmap_max=16, latent_dim=8))
    names = module_names(G, G.stage_modules(8))
    assert names == ["input", "blocks.8", "torgb.8", "torgb.4"]
    ema = make_ema(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    update_ema(ema, G, beta=0.0, modules=names)
    assert torch.equal(ema.blocks["8"].conv0.weight, G.blocks["8"].conv0.weight)
    assert not torch.equal(ema.blocks["16"].conv0.weight, G.blocks["16"].conv0.weight)


def test_per_step_decay_as_in_the_pggan_paper():
    """ema.beta_per_step: the same decay at every step whatever the batch or position."""
    for batch, nimg in ((512, 0), (16, 10 ** 7)):
        assert ema_beta(nimg, batch, 10.0, 0.05, beta_per_step=0.999) == 0.999
    assert ema_beta(10 ** 7, 16, 10.0, None) != 0.999               # the half-life form


def test_a_dropped_step_leaves_g_ema_as_it_is_and_a_kept_one_is_the_plain_update():
    """keep (a device bool, the non-finite guard's) False: no change at all; True: bit for bit
    the update with the number 1 - beta."""
    G = Tiny()
    with torch.no_grad():
        for p in G.parameters():
            p.normal_()
        G.avg.fill_(3.0)
    plain, kept, dropped = make_ema(G), make_ema(G), make_ema(G)
    with torch.no_grad():
        for ema in (plain, kept, dropped):
            for p in ema.parameters():
                p.mul_(0.5).add_(0.25)
            ema.avg.fill_(-1.0)
    before = copy.deepcopy(dropped.state_dict())
    beta = 0.5 ** (8 / 50)
    update_ema(plain, G, beta)
    update_ema(kept, G, beta, keep=torch.tensor(True))
    update_ema(dropped, G, beta, keep=torch.tensor(False))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, kept.state_dict()[k]), k
        assert torch.equal(dropped.state_dict()[k], before[k]), k
    assert not torch.equal(plain.a.weight, before["a.weight"])
