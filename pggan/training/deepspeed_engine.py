"""The DeepSpeed engine: the same training loop, with G's and D's Adam states sharded by ZeRO.

`--engine deepspeed --zero-stage {1,2}` runs `pggan.training.loop.Trainer` unchanged. Each of G
and D gets a DeepSpeed engine (`deepspeed.initialize`) whose ZeRO optimizer keeps the float32
master weights and the Adam moments of each parameter split across the processes (stage 1), and
after the reduction keeps only this process's part of the gradients as well (stage 2).

Where the loop and DeepSpeed meet, and why there:

* Forward and backward are the loop's own: it calls G and D directly and runs
  `(loss / rounds).backward()` per micro-batch, as on the DDP path. DeepSpeed's autograd hooks
  are removed right after `deepspeed.initialize`: its per-parameter gradient hooks and its
  "all gradients are in" callback fire on every backward through a module, including the
  `torch.autograd.grad(..., create_graph=True)` of the gradient penalty / R1 and G's backward
  through D, and there they reduce half-finished gradients (or fail in reduce_ipg_grads).
* The step: `ZeroOptimizer.step` runs DeepSpeed's coalesced reduction (`coalesce_grad_reduction`,
  one pass over the gradients accumulated locally by all micro-batches and backward calls of the
  phase), then `engine.step()` (Adam on this process's partition, then the all-gather of the
  updated weights). The loop's accumulation rounds change per resolution; DeepSpeed is told one
  micro-batch per step (gradient_accumulation_steps 1) and never scales the loss, so the loss
  scaling is the loop's `loss / rounds`, exactly as on the DDP path.
* Adam semantics are torch Adam's: every parameter is its own ZeRO parameter group, and
  `_ActiveOnlyAdam` skips the groups of parameters that got no gradient this step (inactive
  blocks of progressive growing, the old toRGB/fromRGB once a fade-in is over, D's output bias
  in a lazy-R1 step). Without that, ZeRO would hand Adam zeros for them: their moments would
  decay and their step counts advance, and a block that becomes active later (optim
  reset_on_grow false) would start with wrong bias corrections.
* The learning rate per resolution: the loop writes `lr` into `opt.param_groups`, which are the
  groups of the Adam instance ZeRO steps. Reset on a new resolution: the loop clears
  `opt.state`, the moments of the flat partitions; Adam re-creates them at the next step.
* Precision: parameters and master weights stay float32 and `--mixed-precision bf16` is autocast
  around the forward passes (Engine.autocast), as on the DDP path. DeepSpeed's own "bf16" mode
  would turn G's and D's weights into bfloat16, and the penalties (losses.py: float32, autocast
  off) could not run float32 through bfloat16 weights; G_ema would average bfloat16 weights.
  A "bf16" section in the DeepSpeed config file is therefore ignored.
* Checkpoints: every process writes its slices of the Adam state (optimizer_shards.py); the
  training state of rank 0 holds everything else. They resume under any number of processes and
  under either engine.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import ZERO_STAGES, ConfigError, TrainConfig
from .checkpoint import CheckpointError
from .dist_env import DistEnvError, process_env
from .engine import Engine, resolve_mixed_precision
from .optimizer_shards import (begin_shard_dir, commit_shard_dir, full_optimizer_state,
                               shard_dir_name, shard_marker, shard_tmp_dir, write_shard)

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"

# Keys of a DeepSpeed config file that the loop decides: refused with the reason.
_REFUSED = {
    "optimizer": "the loop builds Adam (optim.* options)",
    "scheduler": "the learning rate follows the resolution schedule (schedule.lr, lr_by_res)",
    "fp16": "float16 needs loss scaling; use --mixed-precision bf16",
}
_REFUSED_ZERO = {
    "offload_optimizer": "optimizer offload is not supported by this engine",
    "offload_param": "parameter offload is ZeRO-3, which this engine does not run",
}
# Keys replaced by the engine (the loop accumulates micro-batches itself; precision is autocast).
_REPLACED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
             "bf16", "torch_autocast")


def default_config_path(zero_stage: int) -> Path:
    return LAUNCH_DIR / f"deepspeed-zero{zero_stage}.json"


def read_deepspeed_config(path, zero_stage: int) -> dict:
    """Read and check a DeepSpeed JSON config for `zero_stage`; one-line ConfigErrors."""
    path = Path(path)
    where = f"--deepspeed-config {path}"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read it ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    for key, why in _REFUSED.items():
        if key in cfg and (key != "fp16" or (cfg[key] or {}).get("enabled", False)):
            raise ConfigError(f"{where}: remove \"{key}\": {why}")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{where}: \"zero_optimization\" must be an object")
    for key, why in _REFUSED_ZERO.items():
        if key in zero:
            raise ConfigError(f"{where}: remove zero_optimization.{key}: {why}")
    stage = zero.get("stage", zero_stage)
    if stage != zero_stage:
        raise ConfigError(f"{where}: the file sets zero_optimization.stage {stage} but the run "
                          f"asks for --zero-stage {zero_stage}; make them agree")
    if cfg.get("managed_gradient_accumulation", True) is not True:
        raise ConfigError(f"{where}: remove \"managed_gradient_accumulation\": the engine "
                          f"reduces once per optimizer step itself")
    return cfg


def engine_config(file_cfg: dict, zero_stage: int, images_per_step: int) -> dict:
    """The config handed to deepspeed.initialize: the file's communication settings, the
    stage, and one micro-batch of `images_per_step` (this process's images per optimizer step
    at the first stage; DeepSpeed only counts samples with it)."""
    cfg = {k: copy.deepcopy(v) for k, v in file_cfg.items() if k not in _REPLACED}
    zero = dict(cfg.get("zero_optimization", {}), stage=zero_stage)
    if not cfg.get("gradient_clipping", 0.0):
        # Without clipping the global gradient norm only serves ZeRO's "skip the step on a
        # non-finite gradient", which the DDP path does not do either; it costs a norm per
        # parameter and step.
        zero.setdefault("compute_grad_norm", False)
    cfg["zero_optimization"] = zero
    cfg.update(train_micro_batch_size_per_gpu=int(images_per_step),
               gradient_accumulation_steps=1,
               zero_allow_untested_optimizer=True)   # _ActiveOnlyAdam subclasses torch Adam
    return cfg


class _ActiveOnlyAdam(torch.optim.Adam):
    """torch Adam over ZeRO's flat partitions, one parameter per group, that leaves alone the
    groups listed in `idle` (parameters without a gradient this step), as torch Adam leaves a
    parameter whose .grad is None: no update, no moment decay, no step count."""

    def __init__(self, params, **defaults):
        super().__init__(params, **defaults)
        self.idle: set = set()          # ids of flat partitions to skip in the next step

    def step(self, closure=None):
        groups = self.param_groups
        active = [g for g in groups if id(g["params"][0]) not in self.idle]
        if len(active) == len(groups):
            return super().step(closure)
        self.param_groups = active      # ZeRO steps group by group in the same way
        try:
            return super().step(closure) if active else None
        finally:
            self.param_groups = groups


class ZeroOptimizer:
    """What the loop holds as `opt["G"]` / `opt["D"]` under DeepSpeed: Adam's interface
    (zero_grad, param_groups, state, step) over one net's ZeRO-partitioned Adam."""

    def __init__(self, ds_engine, net: nn.Module, rank: int, world_size: int):
        self.ds = ds_engine
        self.zero = ds_engine.optimizer                 # DeepSpeedZeroOptimizer
        self.inner: _ActiveOnlyAdam = self.zero.optimizer
        self.rank, self.world_size = rank, world_size
        named = list(net.named_parameters())
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.flats = list(self.zero.single_partition_of_fp32_groups)   # [partition] float32
        self.partition_numel = [int(n) for n in self.zero.partition_size]
        self._check_layout()

    def _check_layout(self) -> None:
        """Shards are cut as [rank * partition, (rank + 1) * partition) of each parameter's
        flattened tensor: make sure this DeepSpeed lays partitions out that way."""
        z = self.zero
        ok = len(z.bit16_groups) == len(self.params) == len(self.flats)
        for i, p in enumerate(self.params if ok else []):
            flat, part = z.bit16_groups_flat[i], self.partition_numel[i]
            mine = z.parallel_partitioned_bit16_groups[i][self.rank]
            ok = ok and len(z.bit16_groups[i]) == 1 and z.bit16_groups[i][0] is p \
                and flat.numel() == part * self.world_size \
                and p.data_ptr() == flat.data_ptr() \
                and mine.data_ptr() == flat.data_ptr() + self.rank * part * flat.element_size() \
                and self.inner.param_groups[i]["params"][0] is self.flats[i]
        if not ok:
            import deepspeed
            raise RuntimeError(f"DeepSpeed {deepspeed.__version__} lays out ZeRO partitions "
                               f"differently from what pggan's DeepSpeed engine expects (one "
                               f"parameter per group, partitions in rank order)")

    # ---- the optimizer interface the loop uses ----------------------------------------

    @property
    def param_groups(self) -> List[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.zero.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Reduce the gradients the loop accumulated (one pass), Adam on this process's
        partition of the parameters that got a gradient, all-gather the weights."""
        idle = {id(flat) for p, flat in zip(self.params, self.flats) if p.grad is None}
        with self.ds.coalesce_grad_reduction():
            pass                        # leaving the block reduces the accumulated gradients
        self.inner.idle = idle
        try:
            self.ds.step()
        finally:
            self.inner.idle = set()

    # ---- checkpoints -----------------------------------------------------------------

    def _slice(self, i: int):
        """This process's [start, stop) of parameter i's flattened tensor."""
        n, part = self.params[i].numel(), self.partition_numel[i]
        return min(self.rank * part, n), min((self.rank + 1) * part, n)

    def shard_state(self) -> dict:
        """This process's slices of the Adam state, by parameter name (CPU tensors)."""
        state = {}
        for i, (name, p, flat) in enumerate(zip(self.names, self.params, self.flats)):
            st = self.inner.state.get(flat)
            if not st:
                continue                # never stepped since the last reset
            start, stop = self._slice(i)
            tensors, sliced = {}, []
            for key, value in st.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    tensors[key] = value.detach()[:stop - start].cpu().clone()
                    sliced.append(key)
                else:
                    tensors[key] = value.detach().cpu().clone() if torch.is_tensor(value) \
                        else value
            state[name] = {"numel": p.numel(), "shape": list(p.shape), "start": start,
                           "stop": stop, "sliced": sliced, "tensors": tensors}
        hyper = {k: v for k, v in self.inner.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [hyper]}

    def load_full_state(self, saved: dict, where: str) -> None:
        """Load a by-name state with whole tensors (checkpoint.optimizer_state_by_name's form):
        each process keeps its slice, zero-padded to its partition."""
        known = set(self.names)
        unknown = [n for n in saved["state"] if n not in known]
        if unknown:
            raise CheckpointError(f"{where}: state for parameters this network does not have "
                                  f"({len(unknown)}, e.g. {unknown[0]})")
        if len(saved["param_groups"]) != 1:
            raise CheckpointError(f"{where}: {len(saved['param_groups'])} parameter groups "
                                  f"saved, 1 expected")
        state = {}
        for i, (name, p, flat) in enumerate(zip(self.names, self.params, self.flats)):
            if name not in saved["state"]:
                continue
            start, stop = self._slice(i)
            entry = {}
            for key, value in saved["state"][name].items():
                if torch.is_tensor(value) and value.dim() > 0:
                    if value.numel() != p.numel():
                        raise CheckpointError(f"{where}: Adam {key} of {name} has "
                                              f"{value.numel()} elements, the parameter "
                                              f"{p.numel()}")
                    part = torch.zeros(self.partition_numel[i], dtype=flat.dtype)
                    part[:stop - start] = value.reshape(-1)[start:stop]
                    entry[key] = part
                else:
                    entry[key] = value
            state[i] = entry
        hyper = saved["param_groups"][0]
        self.inner.load_state_dict({"state": state,
                                    "param_groups": [dict(hyper, params=[i])
                                                     for i in range(len(self.params))]})

    def refresh_master_weights(self) -> None:
        """After the module's weights were loaded: copy them into the float32 partitions
        Adam updates (ZeRO keeps its own copy of them)."""
        self.zero.refresh_fp32_params()


class _DropUntestedOptimizerWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "untested optimizer" not in record.getMessage()


@contextlib.contextmanager
def _quiet_untested_optimizer_warning():
    """ZeRO warns about any optimizer class it does not list; _ActiveOnlyAdam is torch Adam
    with a skip list, checked against torch Adam bit for bit in tests/training."""
    ds_logger = logging.getLogger("DeepSpeed")
    drop = _DropUntestedOptimizerWarning()
    ds_logger.addFilter(drop)
    try:
        yield
    finally:
        ds_logger.removeFilter(drop)


def _export_launcher_env(rank: int, world_size: int, local_rank: int) -> None:
    """deepspeed.init_distributed reads the torch.distributed variables: fill in what a plain
    `python` start or an `srun` task lacks (one process: a free local port)."""
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if world_size == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"--engine deepspeed with {world_size} processes: {name} is "
                              f"unset; start with torchrun or the deepspeed launcher")


class DeepSpeedEngine(Engine):
    """Process group from deepspeed.init_distributed (NCCL on GPUs, gloo on CPU); rank and
    world size from the launcher's RANK / WORLD_SIZE / LOCAL_RANK (dist_env.process_env)."""

    def __init__(self, train_cfg: TrainConfig, config_path=None):
        stage = train_cfg.zero_stage
        if stage not in ZERO_STAGES:
            raise ConfigError(f"--zero-stage {stage}: the DeepSpeed engine runs ZeRO stage 1 "
                              f"or 2 (for plain data parallel use --engine ddp)")
        self.zero_stage = stage
        if config_path is not None:
            self.config_path: Optional[Path] = Path(config_path)
        else:       # an installed package has no launch/ directory: DeepSpeed's defaults
            default = default_config_path(stage)
            self.config_path = default if default.is_file() else None
        self.file_config = read_deepspeed_config(self.config_path, stage) \
            if self.config_path is not None else {}
        try:
            penv = process_env()
        except DistEnvError as e:
            raise ConfigError(str(e)) from None
        try:
            import deepspeed
        except ImportError as e:
            raise ConfigError(f"--engine deepspeed needs the deepspeed package ({e}); "
                              f"pip install 'pggan[deepspeed]'") from None
        cuda = torch.cuda.is_available()
        self.mixed_precision = resolve_mixed_precision(train_cfg)
        if cuda:
            self.device = torch.device("cuda", penv.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        _export_launcher_env(penv.rank, penv.world_size, penv.local_rank)

        # DeepSpeed's own all-gather call; nothing a user of pggan can act on.
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r"`torch\.distributed\.all_gather_into_tensor` is "
                                        r"deprecated")
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = penv.local_rank
        self.ds_engines: Dict[str, object] = {}
        if self.is_main:
            print(f"pggan-train: DeepSpeed {deepspeed.__version__}, ZeRO stage {stage}, config "
                  f"{self.config_path or 'DeepSpeed defaults'}", flush=True)

    # ---- optimizers ------------------------------------------------------------------

    def prepare_optimizers(self, nets: Dict[str, nn.Module], opts: Dict[str, torch.optim.Adam],
                           images_per_step: int) -> Dict[str, ZeroOptimizer]:
        """One DeepSpeed engine per net; the loop's Adam settings (lr, betas, eps) carry over."""
        import deepspeed
        from deepspeed.runtime.engine import DeepSpeedEngine as _DSEngine
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
        if not hasattr(_DSEngine, "coalesce_grad_reduction"):
            raise ConfigError(f"--engine deepspeed needs a DeepSpeed with "
                              f"engine.coalesce_grad_reduction (0.19.8 is tested); this is "
                              f"{deepspeed.__version__}: pip install -U deepspeed")
        cfg = engine_config(self.file_config, self.zero_stage, images_per_step)
        out = {}
        for name, net in nets.items():
            adam = _ActiveOnlyAdam([{"params": [p]} for p in net.parameters()],
                                   **opts[name].defaults)
            with _quiet_untested_optimizer_warning():
                ds, zero, _, _ = deepspeed.initialize(model=net, optimizer=adam,
                                                      config=copy.deepcopy(cfg),
                                                      dist_init_required=False)
            if not isinstance(zero, DeepSpeedZeroOptimizer):
                raise ConfigError(f"--deepspeed-config {self.config_path}: DeepSpeed built "
                                  f"{type(zero).__name__}, not a ZeRO stage 1/2 optimizer "
                                  f"(remove what selects it, e.g. \"bf16\" options)")
            # The loop owns forward and backward (see the module docstring).
            zero.unregister_grad_acc_post_hooks()
            for handle in zero._grad_acc_hooks:
                handle.remove()
            zero._grad_acc_hooks = []
            ds.module_forward_pre_hook.remove()
            ds.module_forward_post_hook.remove()
            self.ds_engines[name] = ds
            out[name] = ZeroOptimizer(ds, net, self.rank, self.world_size)
        return out

    def sync_grads(self, params) -> None:
        """Nothing here: ZeroOptimizer.step reduces the gradients (DeepSpeed's buckets)."""

    # ---- checkpoints -----------------------------------------------------------------

    def save_optimizer_states(self, opts, nets, directory: Path, cur_nimg: int) -> dict:
        """Collective: every process writes its shard, rank 0 commits the directory.
        -> the G_opt / D_opt markers for the training state."""
        directory = Path(directory)
        tmp = shard_tmp_dir(directory, cur_nimg)
        if self.is_main:
            begin_shard_dir(tmp)
        self.barrier()
        write_shard(tmp, self.rank, self.world_size, self.zero_stage,
                    {name: opt.shard_state() for name, opt in opts.items()})
        self.barrier()
        if self.is_main:
            commit_shard_dir(directory, cur_nimg)
        name = shard_dir_name(cur_nimg)
        marker = shard_marker(name, self.world_size, self.zero_stage)
        return {**{f"{net}_opt": marker for net in opts}, "optimizer_shards": name}

    def load_optimizer_states(self, opts, nets, data: dict, path) -> None:
        for name, opt in opts.items():
            opt.refresh_master_weights()
            saved = full_optimizer_state(data, name, Path(path) if path else None)
            opt.load_full_state(saved, f"{path}: {name}_opt")

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()
