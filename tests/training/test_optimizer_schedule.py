"""The loop applies the schedule to the optimizers: Adam's lr and beta2 at every step are the
schedule's (ramped for R3GAN), and Adam's state is emptied where a new resolution starts
(optim.reset_on_grow) and, with optim.reset_on_stab, where a fade ends."""
import pytest
import torch

from pggan.config import Config, Cosine, validate
from pggan.training.engine import Engine
from pggan.training.loop import Trainer


def tiny_cfg(run_dir, **optim) -> Config:
    cfg = Config()
    m = cfg.model
    m.max_res, m.fmap_base, m.fmap_max, m.latent_dim = 8, 32, 8, 8
    s = cfg.schedule
    s.fade_kimg, s.stab_kimg = 0.032, 0.032           # 4 steps of 8 images each
    s.batch_by_res, s.batch_per_gpu_by_res, s.lr_by_res = {4: 8, 8: 8}, {}, {8: 0.002}
    s.lr_ramp = Cosine(0.003, 0.001, 0.1)
    cfg.optim.beta2_ramp = Cosine(0.9, 0.99, 0.1)
    cfg.loss.kind = "r3gan"
    cfg.data.num_workers = 0
    cfg.train.total_kimg = 0.2
    cfg.train.run_dir = str(run_dir)
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return validate(cfg)


def run_steps(trainer, n):
    """-> per step: (cur_nimg, res, phase, Adam state sizes after enter_stage, lr/betas used)."""
    seen = []
    for _ in range(n):
        point = trainer.schedule.at(trainer.cur_nimg)
        trainer.enter_stage(point)
        states = {k: len(o.state) for k, o in trainer.opt.items()}
        trainer.train_step(point)
        groups = {k: (o.param_groups[0]["lr"], o.param_groups[0]["betas"])
                  for k, o in trainer.opt.items()}
        seen.append((point.cur_nimg, point.res, point.phase, states, groups, point))
    return seen


@pytest.mark.parametrize("reset_on_stab", [False, True])
def test_adam_resets_and_hyper_parameters(tmp_path, one_thread, reset_on_stab):
    torch.manual_seed(0)
    t = Trainer(tiny_cfg(tmp_path, reset_on_stab=reset_on_stab), Engine(), tmp_path)
    steps = run_steps(t, 14)
    # 4x4: [0, 32); 8x8 fades over [32, 64), stabilises from 64.
    by_nimg = {s[0]: s for s in steps}
    assert by_nimg[0][3] == {"G": 0, "D": 0}
    assert by_nimg[24][3]["G"] > 0 and by_nimg[24][3]["D"] > 0
    assert by_nimg[32][3] == {"G": 0, "D": 0}            # new resolution: reset_on_grow
    assert by_nimg[56][3]["G"] > 0
    if reset_on_stab:
        assert by_nimg[64][2] == "stab" and by_nimg[64][3] == {"G": 0, "D": 0}
    else:
        assert by_nimg[64][3]["G"] > 0 and by_nimg[64][3]["D"] > 0
    assert by_nimg[72][3]["G"] > 0                       # and only there
    for nimg, res, _phase, _states, groups, point in steps:
        want_lr = Cosine(0.003, 0.001, 0.1).at(nimg) * (2.0 if res == 8 else 1.0)
        want_b2 = Cosine(0.9, 0.99, 0.1).at(nimg)
        for name in ("G", "D"):                          # r3gan: no lazy-R1 factor on D
            lr, betas = groups[name]
            assert lr == pytest.approx(want_lr, rel=1e-12), (nimg, name)
            assert betas == pytest.approx((0.0, want_b2), rel=1e-12), (nimg, name)


def test_lazy_r1_factor_reaches_d_only(tmp_path, one_thread):
    cfg = tiny_cfg(tmp_path)
    cfg.loss.kind, cfg.loss.r1_interval = "logistic-r1", 4
    t = Trainer(validate(cfg), Engine(), tmp_path)
    c = 4 / 5
    for nimg, _res, _ph, _st, groups, point in run_steps(t, 3):
        assert groups["G"][0] == pytest.approx(point.lr)
        assert groups["D"][0] == pytest.approx(point.lr * c)
        assert groups["D"][1] == pytest.approx((0.0, point.beta2 ** c))
