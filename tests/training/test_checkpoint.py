"""Training-state files: Adam state keyed by name (so it survives a bigger network), the index,
pruning that keeps stage boundaries, and which state a resume picks."""
import pytest
import torch

from pggan.config import ModelConfig
from pggan.nets import build_generator
from pggan.training.checkpoint import (CheckpointError, CheckpointIndex,
                                       check_model_compatible, load_module_state,
                                       load_optimizer_state_by_name, optimizer_state_by_name,
                                       resolve_resume, save_training_state, state_file_name)

SMALL = dict(fmap_base=64, fmap_max=16, latent_dim=8)


def trained_adam(G):
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    G(torch.randn(2, 8), res=16, alpha=0.5).square().mean().backward()
    opt.step()
    return opt


def test_adam_state_moves_to_a_bigger_network_by_name():
    torch.manual_seed(0)
    G16 = build_generator(ModelConfig(max_res=16, **SMALL))
    saved = optimizer_state_by_name(trained_adam(G16), G16)
    assert "torgb.16.weight" in saved["state"] and "blocks.16.conv0.weight" in saved["state"]
    G32 = build_generator(ModelConfig(max_res=32, **SMALL))
    load_module_state(G32, G16.state_dict(), 16, "G", "ckpt")
    opt32 = torch.optim.Adam(G32.parameters(), lr=1e-3)
    load_optimizer_state_by_name(opt32, G32, saved)
    params = dict(G32.named_parameters())
    for name, st in saved["state"].items():
        got = opt32.state[params[name]]
        assert torch.equal(got["exp_avg"], st["exp_avg"]), name
    assert len(opt32.state) == len(saved["state"])      # the 32x32 blocks have no state yet
    assert opt32.param_groups[0]["betas"] == (0.0, 0.99)
    # A state for a parameter the network lacks is an error, not silently dropped.
    G8 = build_generator(ModelConfig(max_res=8, **SMALL))
    with pytest.raises(CheckpointError, match="parameters this network does not have"):
        load_optimizer_state_by_name(torch.optim.Adam(G8.parameters()), G8, saved)


def test_weights_that_do_not_fit_are_refused():
    G16 = build_generator(ModelConfig(max_res=16, **SMALL))
    G32 = build_generator(ModelConfig(max_res=32, **SMALL))
    sd = G16.state_dict()
    del sd["blocks.8.conv0.weight"]             # a block below the saved max_res: damaged
    with pytest.raises(CheckpointError, match="missing tensors .*blocks.8.conv0.weight"):
        load_module_state(G32, sd, 16, "G", "ckpt")
    wide = build_generator(ModelConfig(max_res=16, fmap_base=128, fmap_max=32, latent_dim=8))
    with pytest.raises(CheckpointError, match="another shape"):
        load_module_state(G16, wide.state_dict(), 16, "G", "ckpt")


def test_model_compatibility_names_every_difference():
    saved = ModelConfig(max_res=16, **SMALL).__dict__
    check_model_compatible(dict(saved), ModelConfig(max_res=64, impl="ref", **SMALL), "c")
    with pytest.raises(CheckpointError) as e:
        check_model_compatible(dict(saved), ModelConfig(max_res=16, fmap_base=64, fmap_max=32,
                                                        latent_dim=8, arch="stylegan"), "c")
    assert "model.fmap_max 16 (checkpoint) vs 32 (now)" in str(e.value)
    assert "model.arch 'pggan' (checkpoint) vs 'stylegan' (now)" in str(e.value)


def fake_state(cur_nimg, kind="interval", boundary_res=None, res=8):
    return {"kind": kind, "boundary_res": boundary_res, "cur_nimg": cur_nimg, "res": res,
            "step_index": 0, "model": {}, "config": {}, "G": {}, "D": {}, "G_ema": {},
            "G_opt": {}, "D_opt": {}}


def test_keep_last_never_deletes_boundaries(tmp_path):
    save_training_state(tmp_path, fake_state(100, "boundary", 8), keep_last=2)
    for n in (200, 300, 400):
        save_training_state(tmp_path, fake_state(n), keep_last=2)
    save_training_state(tmp_path, fake_state(500, "boundary", 16, res=16), keep_last=2)
    save_training_state(tmp_path, fake_state(600, res=16), keep_last=2)
    index = CheckpointIndex.load(tmp_path / "checkpoints")
    assert [e.cur_nimg for e in index.entries] == [100, 400, 500, 600]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == \
        [state_file_name(n) for n in (100, 400, 500, 600)]
    assert index.boundary(16).cur_nimg == 500 and index.latest().cur_nimg == 600


def test_an_unindexed_state_is_found_from_its_contents(tmp_path):
    save_training_state(tmp_path, fake_state(100), keep_last=5)
    # Written, then killed before the index was updated; the name says nothing about it.
    torch.save(dict(fake_state(700, "boundary", 16, res=16), format="pggan-training-state",
                    version=1), tmp_path / "checkpoints" / "training-state-x.pt")
    index = CheckpointIndex.load(tmp_path / "checkpoints")
    assert [(e.file, e.cur_nimg, e.boundary_res) for e in index.entries] == [
        (state_file_name(100), 100, None), ("training-state-x.pt", 700, 16)]


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(run, None, None) is None
    assert resolve_resume(run, "auto", None) is None          # nothing there: fresh start
    save_training_state(run, fake_state(100, "boundary", 8), keep_last=3)
    save_training_state(run, fake_state(200), keep_last=3)
    ckpts = run / "checkpoints"
    assert resolve_resume(run, "auto", None) == ckpts / state_file_name(200)
    with pytest.raises(CheckpointError, match="already holds training states"):
        resolve_resume(run, None, None)
    other = tmp_path / "other"
    assert resolve_resume(other, str(run), 8) == ckpts / state_file_name(100)
    assert resolve_resume(other, str(ckpts / state_file_name(200)), None) == \
        ckpts / state_file_name(200)
    with pytest.raises(CheckpointError, match="would overwrite"):
        resolve_resume(run, "auto", 8)
    with pytest.raises(CheckpointError, match="another run"):
        save_training_state(other, fake_state(50), keep_last=3)
        resolve_resume(other, str(run), None)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_resume(tmp_path / "x", str(tmp_path / "missing"), None)
