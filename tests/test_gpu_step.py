"""On a GPU: the fused resampling convs against their references (cuDNN, TF32 off), the layout
of a CUDA run, and training steps with no host synchronisation at all
(torch.cuda.set_sync_debug_mode("error") raises on the first one): at 4x4, and at the 8x8
fade-in for the configurations that tests/test_step_sync.py runs on the meta device on CPU."""
import tempfile

import pytest
import torch

from pggan.config import Config
from pggan.stats import Collector, report
from pggan.ops.resample_conv import conv3x3_resample

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def no_tf32():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("mode", ["up", "down"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_matches_reference_on_cuda(mode, layout, no_tf32):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 64, 16, 16, device="cuda", generator=g).to(memory_format=layout)
    x.requires_grad_(True)
    w = torch.randn(32, 64, 3, 3, device="cuda", generator=g, requires_grad=True)
    outs = []
    for fused in (False, True):
        y = conv3x3_resample(x, w, mode, fused, weight_gain=0.05)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        gw, = torch.autograd.grad(gx.square().sum(), w)
        outs.append((y, gx, gw))
    for a, b in zip(*outs):
        # fp32 without TF32: rounding only (see tests/nets/test_fused_scale.py, REL).
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_training_step_has_no_host_sync():
    from pggan.training.engine import Engine
    from pggan.training.loop import Trainer
    cfg = Config()
    cfg.model.max_res, cfg.model.fmap_base, cfg.model.fmap_max = 16, 64, 16
    cfg.model.latent_dim = 16
    cfg.schedule.batch_by_res, cfg.schedule.batch_per_gpu_by_res = {4: 8, 8: 8, 16: 8}, {}
    cfg.schedule.lr_by_res = {}
    cfg.data.num_workers = 0
    engine = Engine()
    engine.device = torch.device("cuda")
    engine.mixed_precision = "bf16"
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, engine, run_dir, print_fn=lambda *a, **k: None)
        assert trainer.channels_last and torch.backends.cudnn.benchmark
        point = trainer.schedule.at(0)
        trainer.enter_stage(point)
        col = Collector()
        with col.active():
            trainer.train_step(point)           # warm-up: stream, optimizer state, kernels
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                trainer.train_step(point)
                report("x", torch.ones(3, device="cuda"))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert col.reduce()["x"] == 1.0


@pytest.mark.parametrize("case", ["wgan-gp", "r3gan-ada", "stylegan", "logistic-lazy-r1"])
def test_training_step_has_no_host_sync_at_a_fade(case):
    """The configurations of tests/test_step_sync.py (which runs them on the meta device on
    CPU), at the middle of the 8x8 fade-in, 2 micro-batches, on CUDA in bf16."""
    from test_step_sync import CASES, tiny_config
    from pggan.training.engine import Engine
    from pggan.training.loop import Trainer
    cfg = tiny_config(**CASES[case])
    engine = Engine()
    engine.device = torch.device("cuda")
    engine.mixed_precision = "bf16"
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, engine, run_dir, print_fn=lambda *a, **k: None)
        stage = trainer.schedule.stage_of(8)
        trainer.cur_nimg = stage.start_nimg + stage.fade_nimg // 2
        point = trainer.schedule.at(trainer.cur_nimg)
        trainer.enter_stage(point)
        trainer.train_step(point)               # warm-up: stream, Adam state, kernels, caches
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):                  # a lazy-R1 cycle: D_reg on one of them
                trainer.train_step(trainer.schedule.at(trainer.cur_nimg))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        flags = trainer.nonfinite.drain()           # the tick's read, after the steps
        assert trainer.step_index == 3 and len(flags) == 3
        assert not any(any(bad) for _, bad in flags), flags
