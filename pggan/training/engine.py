"""The distributed runtime the training loop talks to: ranks, device, precision, collectives.

The loop never touches torch.distributed or the launcher directly; it asks an `Engine`. The one
here, `AccelerateEngine`, lets Hugging Face Accelerate own the launch: process group (NCCL on
GPUs, gloo on CPU), device placement and the mixed-precision choice. `DeepSpeedEngine`
(deepspeed_engine.py) implements the same interface for the same loop with ZeRO-sharded Adam
states (`prepare_optimizers`, `save_optimizer_states`, `load_optimizer_states`);
engine_factory.make_engine picks one from the config (engine.py imports neither of them).

Why G and D are not wrapped in DistributedDataParallel: progressive growing changes which
blocks take part at every stage, and DDP either fails on parameters that got no gradient or, with
find_unused_parameters=True, walks the autograd graph on every step to find them. Instead, after
each backward the loop hands `sync_grads` the parameters of the active stage that received a
gradient (the same list on every rank: it depends only on the stage, fade and phase), and they
are averaged with one all-reduce over a flat buffer (as stylegan2-ada / stylegan3 do). Inactive
blocks are never touched.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import ConfigError, TrainConfig
from .checkpoint import load_optimizer_state_by_name, optimizer_state_by_name


class Engine:
    """Single-process engine (also the base class): no collectives needed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mixed_precision: str = "no"          # no | bf16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """Context for the networks' forward passes: bf16 autocast or nothing (float32)."""
        if self.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- collectives (no-ops for one process) -------------------------------------------

    def sync_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of `params` over all processes (one flat all-reduce). Every
        rank must pass the same parameters in the same order."""
        if not self.distributed or not params:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads])              # [sum of numel]
        self.all_reduce_mean_(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def all_reduce_mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor)
            tensor.div_(self.world_size)
        return tensor

    def all_reduce_max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def all_gather_object(self, obj) -> List:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @torch.no_grad()
    def broadcast_module_(self, module: nn.Module, src: int = 0) -> None:
        """Make every process hold rank `src`'s parameters and buffers."""
        if not self.distributed:
            return
        tensors = list(module.parameters()) + list(module.buffers())
        if not tensors:
            return
        flat = torch.cat([t.detach().flatten().to(torch.float32) for t in tensors])
        dist.broadcast(flat, src)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    # ---- optimizers and their checkpoints (the DeepSpeed engine shards them) ------------

    def prepare_optimizers(self, nets: Dict[str, nn.Module], opts: Dict[str, torch.optim.Adam],
                           images_per_step: int) -> dict:
        """-> the optimizers the loop steps (here: `opts` as they are)."""
        return opts

    def save_optimizer_states(self, opts: dict, nets: Dict[str, nn.Module], directory: Path,
                              cur_nimg: int) -> dict:
        """Collective. -> the training state's "G_opt" / "D_opt" entries (main process)."""
        if not self.is_main:
            return {}
        return {f"{name}_opt": optimizer_state_by_name(opt, nets[name])
                for name, opt in opts.items()}

    def load_optimizer_states(self, opts: dict, nets: Dict[str, nn.Module], data: dict,
                              path) -> None:
        """Load a training state's optimizer states (whole or saved in per-process shards)."""
        from .optimizer_shards import full_optimizer_state
        for name, opt in opts.items():
            saved = full_optimizer_state(data, name, Path(path) if path else None)
            load_optimizer_state_by_name(opt, nets[name], saved, f"{path}: {name}_opt")

    def close(self) -> None:
        pass


def resolve_mixed_precision(train_cfg: TrainConfig) -> str:
    """train.mixed_precision -> 'bf16' or 'no' ('auto': bf16 on a GPU, float32 on the CPU)."""
    cuda = torch.cuda.is_available()
    mp = train_cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if cuda else "no"
    if mp == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed-precision bf16: this GPU has no bfloat16 support; use "
                          "--mixed-precision no")
    return mp


class AccelerateEngine(Engine):
    """Accelerate owns the process group and the device. Works under `accelerate launch`,
    `torchrun` and plain `python` (one process)."""

    def __init__(self, train_cfg: TrainConfig):
        from accelerate import Accelerator

        cuda = torch.cuda.is_available()
        mp = resolve_mixed_precision(train_cfg)
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=mp)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.local_rank = self.accelerator.local_process_index
        self.device = self.accelerator.device
        self.mixed_precision = mp

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()
