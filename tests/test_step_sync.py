"""The whole training step reads no device value on the host, on a CPU-only machine.

On CUDA a host read of a device value (.item(), float(t), bool(t), a device -> host copy) waits
for the device: a sync (tests/test_gpu_step.py catches one with torch.cuda.set_sync_debug_mode
on a GPU). On a CPU nothing can wait, so here the step runs on torch's "meta" device as the
stand-in for the GPU: meta tensors have shapes but no data, so every host read of a device
value raises ("Tensor.item() cannot be called on meta tensors", "Cannot copy out of meta
tensor"), while the host's own work (the data stream, Adam's bookkeeping, the schedule) runs
as usual. A step that completes on meta therefore takes every decision on the device: the
losses, the penalties, the non-finite guard (fused Adam's found_inf), G_ema, ADA's sums.

Two shims make meta usable as that stand-in (monkeypatched, undone after each test): torch
lists only real devices for its fused Adam (the fused kernel has a meta implementation), and
autocast has no meta device type (CPU autocast stands in; the step runs in float32 here).

The host -> device copies of a step are counted too: the latents and penalty weights in one
copy each per step (not one per micro-batch and phase), the reals (and labels) once per
micro-batch."""
import contextlib
import tempfile

import pytest
import torch
import torch.optim.optimizer as optim_base
from torch.utils._python_dispatch import TorchDispatchMode

from pggan.config import Config
from pggan.training.engine import Engine
from pggan.training.loop import Trainer


@pytest.fixture
def meta_device(monkeypatch):
    fused = optim_base._get_fused_kernels_supported_devices
    monkeypatch.setattr(optim_base, "_get_fused_kernels_supported_devices",
                        lambda: list(fused()) + ["meta"])
    autocast = torch.autocast

    class MetaAutocast(autocast):
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", MetaAutocast)
    return torch.device("meta")


class CountCopies(TorchDispatchMode):
    """Copies between devices (host -> device and back) and host reads of device values."""

    def __init__(self):
        super().__init__()
        self.to_device, self.reads = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        src = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if name == "aten._to_copy.default" and "device" in kwargs and src is not None and \
                torch.device(kwargs["device"]) != src.device:
            (self.to_device if src.device.type == "cpu" else self.reads).append(
                tuple(src.shape))
        if name == "aten.copy_.default" and args[0].device != args[1].device:
            (self.to_device if args[1].device.type == "cpu" else self.reads).append(
                tuple(args[1].shape))
        if name == "aten._local_scalar_dense.default" and src is not None and \
                src.device.type != "cpu":
            self.reads.append(tuple(src.shape))
        return func(*args, **kwargs)


def tiny_config(**sets) -> Config:
    cfg = Config()
    cfg.model.max_res, cfg.model.fmap_base, cfg.model.fmap_max = 16, 64, 16
    cfg.model.latent_dim = 16
    # 2 micro-batches of 4 per step: the per-step copies must not grow with them.
    cfg.schedule.batch_by_res, cfg.schedule.batch_per_gpu_by_res = {4: 8, 8: 8, 16: 8}, {8: 4}
    cfg.schedule.lr_by_res = {}
    cfg.data.num_workers = 0
    cfg.train.channels_last = True                  # the CUDA default
    for key, value in sets.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


CASES = {
    "wgan-gp": {},                                               # GP penalty + drift
    "r3gan-ada": {"loss__kind": "r3gan", "augment__mode": "ada",  # R1 + R2, ADA's sums
                  "augment__interval": 1000},
    "stylegan": {"model__arch": "stylegan", "loss__kind": "logistic-r1",  # FIR, noise, mixing
                 "loss__r1_interval": 2},
    "logistic-lazy-r1": {"loss__kind": "logistic-r1", "loss__r1_interval": 2,
                         "train__on_nonfinite": "skip"},
}
# Not here: class-conditional models. The networks' label_onehot (pggan/nets/layers.py) checks
# the label range with int(c.min()) / int(c.max()), host reads of device values; the loop only
# copies the labels (pinned, non_blocking on CUDA).


@contextlib.contextmanager
def meta_trainer(cfg: Config, device: torch.device):
    """A Trainer whose engine puts everything on `device` (the meta stand-in), in a temporary
    run directory."""
    engine = Engine()
    engine.device = device
    with tempfile.TemporaryDirectory() as run_dir:
        yield Trainer(cfg, engine, run_dir, print_fn=lambda *a, **k: None)


@pytest.mark.parametrize("case", list(CASES))
def test_the_step_on_the_meta_device_reads_nothing_back(case, meta_device):
    cfg = tiny_config(**CASES[case])
    with meta_trainer(cfg, meta_device) as trainer:
        # The middle of the 8x8 fade-in: resampling, the fade of G, D and the reals.
        stage = trainer.schedule.stage_of(8)
        trainer.cur_nimg = stage.start_nimg + stage.fade_nimg // 2
        point = trainer.schedule.at(trainer.cur_nimg)
        assert point.res == 8 and 0 < point.alpha < 1 and point.accum_rounds == 2
        trainer.enter_stage(point)
        trainer.train_step(point)                   # warm-up: stream, Adam state, caches
        for _ in range(2):                          # a lazy-R1 cycle: D_reg on one of them
            with CountCopies() as c:
                trainer.train_step(trainer.schedule.at(trainer.cur_nimg))
            assert c.reads == [], c.reads
            # z_D, z_G and the GP weights once each; the reals once per micro-batch.
            assert len(c.to_device) == 3 + point.accum_rounds, c.to_device
        assert trainer.step_index == 3 and trainer.nonfinite.pending_steps == 3
        for opt in trainer.opt.values():
            assert opt.defaults["fused"] and opt.found_inf.device == meta_device


def test_a_host_read_on_meta_is_caught(meta_device):
    """The stand-in catches what it has to: a read of a device value, e.g. the per-phase
    flag read the DeepSpeed engine keeps (Trainer._skip_nonfinite)."""
    x = torch.ones(3, device=meta_device)
    with pytest.raises(RuntimeError, match="meta"):
        bool(x.sum() > 0)
    with pytest.raises((RuntimeError, NotImplementedError)):
        x.cpu().tolist()
    with meta_trainer(tiny_config(), meta_device) as trainer:
        point = trainer.schedule.at(0)
        trainer.enter_stage(point)
        trainer.nonfinite = None                    # the DeepSpeed engine's path
        with pytest.raises(RuntimeError, match="meta"):
            trainer.train_step(point)


def test_augmentation_reads_nothing_back_but_copies_its_parameters(meta_device):
    """Augmentation with p > 0 (kornia) reads no device value either, but draws the random
    parameters of each transform on the host and copies them to the device: many copies per
    step, each a blocking one on CUDA. Not changed yet (pggan/data/augment.py); this pins it."""
    with meta_trainer(tiny_config(augment__mode="fixed", augment__p=0.5), meta_device) as trainer:
        point = trainer.schedule.at(0)
        trainer.enter_stage(point)
        trainer.train_step(point)
        with CountCopies() as c:
            trainer.train_step(trainer.schedule.at(trainer.cur_nimg))
        assert c.reads == []
        assert len(c.to_device) > 10 * (3 + point.accum_rounds), len(c.to_device)
