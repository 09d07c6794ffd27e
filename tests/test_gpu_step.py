"""On a GPU: the fused resampling convs against their references (cuDNN, TF32 off), the layout
of a CUDA run, and a training step with no host synchronisation at all
(torch.cuda.set_sync_debug_mode("error") raises on the first one)."""
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
