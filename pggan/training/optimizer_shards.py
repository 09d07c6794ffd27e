"""Optimizer state saved as one file per process (ZeRO), and reassembled by parameter name.

Under ZeRO (the DeepSpeed engine) no process holds the whole Adam state of G or D: each holds
a contiguous slice of every parameter's flattened state. A training state then stores, instead
of `G_opt` / `D_opt`, a small marker naming a directory beside it

    RUN_DIR/checkpoints/training-state-<cur_nimg:012d>.pt           (rank 0: everything else)
    RUN_DIR/checkpoints/training-state-<cur_nimg:012d>.optim/
        rank-00000-of-00002.pt     this process's slices of G's and D's Adam state
        rank-00001-of-00002.pt

written by every process into a temp directory that rank 0 renames once all files are complete
(before the training state and the index are written, so an indexed state always has its
shards). A shard holds, per parameter name, the slice [start, stop) of the flattened tensors
(exp_avg, exp_avg_sq, ...) and the scalars (step) as they are.

`full_optimizer_state` turns either form of a training state's `G_opt` / `D_opt` into the
by-name form of `checkpoint.optimizer_state_by_name` (whole tensors shaped like the
parameters). So a state saved with N processes under ZeRO resumes with any number of
processes, under ZeRO or DDP, and a DDP state resumes under ZeRO: every loader slices what it
needs from whole tensors.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Optional

import torch

from ..files import atomic_torch_save, load_torch
from .checkpoint import CheckpointError

SHARD_FORMAT = "pggan-optimizer-shard"
SHARD_VERSION = 1


def shard_dir_name(cur_nimg: int) -> str:
    return f"training-state-{int(cur_nimg):012d}.optim"


def shard_file_name(rank: int, world_size: int) -> str:
    return f"rank-{rank:05d}-of-{world_size:05d}.pt"


def is_sharded(saved_opt) -> bool:
    """True for the marker a sharded training state stores as G_opt / D_opt."""
    return isinstance(saved_opt, dict) and "shards" in saved_opt


def shard_marker(dir_name: str, world_size: int, zero_stage: int) -> dict:
    return {"shards": dir_name, "world_size": int(world_size), "zero_stage": int(zero_stage)}


# --------------------------------------------------------------------------------------------
# Writing (every process).


def shard_tmp_dir(directory: Path, cur_nimg: int) -> Path:
    return Path(directory) / f".{shard_dir_name(cur_nimg)}.tmp"


def begin_shard_dir(tmp: Path) -> None:
    """Main process: an empty temp directory for the shards (a leftover of a killed save is
    removed: it was never indexed)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def write_shard(tmp_dir: Path, rank: int, world_size: int, zero_stage: int,
                nets: Dict[str, dict]) -> None:
    """This process's slices. nets = {"G": {"state": {name: entry}, "param_groups": [hyper]},
    "D": ...}; entry = {"numel", "shape", "start", "stop" (the slice of the flattened
    parameter), "sliced" (keys of `tensors` holding that slice), "tensors" (exp_avg,
    exp_avg_sq, ... sliced; step whole)}."""
    atomic_torch_save(Path(tmp_dir) / shard_file_name(rank, world_size),
                      {"format": SHARD_FORMAT, "version": SHARD_VERSION, "rank": rank,
                       "world_size": world_size, "zero_stage": zero_stage, "nets": nets})


def commit_shard_dir(directory: Path, cur_nimg: int) -> str:
    """Main process, after every process wrote its file: temp dir -> final name. A final
    directory of the same name can only be an unindexed leftover (a save killed before its
    training state was written); it is replaced."""
    name = shard_dir_name(cur_nimg)
    final, tmp = Path(directory) / name, shard_tmp_dir(directory, cur_nimg)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return name


# --------------------------------------------------------------------------------------------
# Reading.


def _read_shard(path: Path, where: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{where}: optimizer shard {path.parent.name}/{path.name} is "
                              f"missing; the checkpoint is incomplete, resume from another one")
    data = load_torch(path, "optimizer shard", CheckpointError)
    if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT or \
            data.get("version") != SHARD_VERSION:
        raise CheckpointError(f"{path}: not a pggan optimizer shard (version {SHARD_VERSION})")
    return data


def _assemble(net: str, shards: list, where: str) -> dict:
    """Slices of all processes -> the by-name form with whole tensors."""
    names = []
    for sd in shards:
        for name in sd["nets"][net]["state"]:
            if name not in names:
                names.append(name)
    state = {}
    for name in names:
        pieces = [sd["nets"][net]["state"].get(name) for sd in shards]
        if any(p is None for p in pieces):
            raise CheckpointError(f"{where}: {net} Adam state of {name} is missing from some "
                                  f"shards; the checkpoint is damaged")
        pieces.sort(key=lambda p: (p["start"], p["stop"]))
        numel, shape = pieces[0]["numel"], tuple(pieces[0]["shape"])
        covered = 0
        for p in pieces:                # consecutive ranks hold consecutive slices
            if p["start"] != covered:
                raise CheckpointError(f"{where}: the shards of {net}.{name} do not tile it; "
                                      f"the checkpoint is damaged")
            covered = p["stop"]
        if covered != numel:
            raise CheckpointError(f"{where}: the shards of {net}.{name} cover {covered} of "
                                  f"{numel} elements; the checkpoint is damaged")
        entry = {}
        for key, value in pieces[0]["tensors"].items():
            if key in pieces[0]["sliced"]:
                entry[key] = torch.cat([p["tensors"][key] for p in pieces]).view(shape)
            else:
                entry[key] = value
        state[name] = entry
    return {"state": state, "param_groups": shards[0]["nets"][net]["param_groups"]}


def full_optimizer_state(data: dict, net: str, state_path: Optional[Path]) -> dict:
    """The by-name optimizer state of `net` ("G" or "D") from a training state `data` read
    from `state_path`, assembling shards when the state was saved sharded."""
    saved = data[f"{net}_opt"]
    if not is_sharded(saved):
        return saved
    where = str(state_path)
    if state_path is None:
        raise CheckpointError(f"{net}_opt is sharded but the training state's path is unknown")
    directory = Path(state_path).parent / saved["shards"]
    world = int(saved["world_size"])
    shards = [_read_shard(directory / shard_file_name(r, world), where) for r in range(world)]
    return _assemble(net, shards, where)
