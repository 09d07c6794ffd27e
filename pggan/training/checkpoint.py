"""Training states: what is saved (`TrainingState`), where, which ones are kept, and how a run
finds one to resume.

RUN_DIR/checkpoints/training-state-<cur_nimg:012d>.pt is a torch.save'd dict, format
"pggan-training-state" version 1, holding the fields of `TrainingState` (below: their meaning
and the names they are stored under). It is read back with weights_only=True, so no code is
unpickled.

RUN_DIR/checkpoints/index.json lists every state with its cur_nimg, kind and boundary_res; the
position of a state is read from there (or from the file itself), never from its name. The
last `train.keep_last` non-boundary states are kept; boundary states are never deleted.
Files are written via temp file + rename (pggan.files.atomic_write), the index after
the state, so a kill at any moment leaves complete files, and a failed write (ENOSPC, EIO)
leaves no temp file and the previous files as they were. A state holding NaN/Inf is never
written.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..files import TEMP_GLOB, atomic_torch_save, atomic_write_json, first_line, load_torch

FORMAT = "pggan-training-state"
VERSION = 1
INDEX_FORMAT = "pggan-checkpoint-index"
CHECKPOINT_DIR = "checkpoints"
INDEX_NAME = "index.json"
STATE_GLOB = "training-state-*.pt"
KINDS = ("interval", "boundary", "final", "signal")

# Model fields that may differ between the checkpoint and the run: max_res (a run may continue
# growing) and impl (which kernels compute the same math).
_FREE_MODEL_FIELDS = ("max_res", "impl")


class CheckpointError(ValueError):
    """A training state that cannot be used, worded as a one-line message."""


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def state_file_name(cur_nimg: int) -> str:
    return f"training-state-{int(cur_nimg):012d}.pt"


# --------------------------------------------------------------------------------------------
# The training state.


@dataclass
class TrainingState:
    """Everything a run needs to continue bit for bit, as CPU tensors and plain values. Stored
    under the field names, except `nets` (stored as G, D, G_ema) and `optimizers` (G_opt,
    D_opt). Schedule position, learning rates, latents and data order are functions of
    cur_nimg and the config, so they are not stored."""

    cur_nimg: int                   # images shown: the position in training
    step_index: int                 # optimizer steps taken (lazy-R1 phases, ADA's interval)
    res: int                        # the stage the Adam moments belong to (a different stage
                                    # at cur_nimg, after a schedule change, is entered anew)
    nets: Dict[str, dict]           # "G", "D", "G_ema" -> state dict
    optimizers: Dict[str, object]   # "G_opt", "D_opt" -> Adam state keyed by parameter name
                                    # (not index, so a state from a smaller max_res loads into
                                    # a bigger network whose parameter order differs), or with
                                    # the DeepSpeed engine a marker naming `optimizer_shards`
    model: dict                     # ModelConfig as a dict (checked on resume)
    config: dict                    # the full resolved Config as a dict
    kind: str = "interval"          # KINDS: why it was written
    boundary_res: Optional[int] = None  # the resolution whose stage starts here, or None
    augment: Optional[dict] = None  # AugmentPipe state (its probability p), or None
    ada_accum: Optional[list] = None    # ADA's [sum of sign(D(real)), count] not yet applied
                                        # to p (data.augment.AdaController)
    trained_res: Optional[int] = None   # resolution and fade of the last step (informative:
    trained_alpha: Optional[float] = None   # snapshots record them)
    optimizer_shards: Optional[str] = None  # (DeepSpeed) directory beside the state holding
                                        # each process's slice of the Adam states
                                        # (optimizer_shards.py); the index records it and
                                        # pruning deletes it too
    world_size: int = 1
    torch_version: str = ""
    cpu_threads: Optional[int] = None   # torch's intra-op threads of the run; a resumed run
                                        # keeps them (cpu_threads.py); None: not recorded

    NETS = ("G", "D", "G_ema")
    OPTIMIZERS = ("G_opt", "D_opt")

    def to_payload(self) -> dict:
        """-> the dict written to the file (format and version added by save)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("nets", "optimizers", "optimizer_shards")}
        out.update({k: self.nets[k] for k in self.NETS})
        out.update({k: self.optimizers[k] for k in self.OPTIMIZERS})
        out["scaler"] = None            # bf16 needs no loss scaling; kept for older readers
        if self.optimizer_shards is not None:
            out["optimizer_shards"] = self.optimizer_shards
        return out

    @classmethod
    def from_payload(cls, data: dict, path=None) -> "TrainingState":
        """A dict as read_training_state returns it -> TrainingState; one-line errors."""
        try:
            return cls(cur_nimg=int(data["cur_nimg"]), step_index=int(data["step_index"]),
                       res=int(data["res"]), nets={k: data[k] for k in cls.NETS},
                       optimizers={k: data[k] for k in cls.OPTIMIZERS},
                       model=dict(data["model"]), config=dict(data["config"]),
                       kind=str(data.get("kind", "interval")),
                       boundary_res=data.get("boundary_res"), augment=data.get("augment"),
                       ada_accum=data.get("ada_accum"), trained_res=data.get("trained_res"),
                       trained_alpha=data.get("trained_alpha"),
                       optimizer_shards=data.get("optimizer_shards"),
                       world_size=int(data.get("world_size", 1)),
                       torch_version=str(data.get("torch_version", "")),
                       cpu_threads=data.get("cpu_threads"))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path or 'training state'}: training state does not load "
                                  f"({first_line(e)})") from None

    @classmethod
    def load(cls, path) -> "TrainingState":
        return cls.from_payload(read_training_state(path), path)

    def save(self, run_dir, keep_last: int) -> Path:
        return save_training_state(run_dir, self, keep_last)


# --------------------------------------------------------------------------------------------
# Optimizer state keyed by parameter name.


def _param_names(module: nn.Module) -> Dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


ADAM_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def optimizer_state_by_name(opt: torch.optim.Optimizer, module: nn.Module) -> dict:
    """opt.state_dict() with per-parameter state keyed by `module`'s parameter names."""
    sd = opt.state_dict()
    names = _param_names(module)
    index_to_name = {}
    for group_sd, group in zip(sd["param_groups"], opt.param_groups):
        for index, p in zip(group_sd["params"], group["params"]):
            index_to_name[index] = names[id(p)]
    state = {index_to_name[i]: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                                for k, v in s.items()}
             for i, s in sd["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer_state_by_name(opt: torch.optim.Optimizer, module: nn.Module, saved: dict,
                                 where: str = "optimizer") -> None:
    sd = opt.state_dict()
    names = _param_names(module)
    name_to_index = {}
    for group_sd, group in zip(sd["param_groups"], opt.param_groups):
        for index, p in zip(group_sd["params"], group["params"]):
            name_to_index[names[id(p)]] = index
    unknown = [n for n in saved["state"] if n not in name_to_index]
    if unknown:
        raise CheckpointError(f"{where}: state for parameters this network does not have "
                              f"({len(unknown)}, e.g. {unknown[0]})")
    if len(saved["param_groups"]) != len(sd["param_groups"]):
        raise CheckpointError(f"{where}: {len(saved['param_groups'])} parameter groups saved, "
                              f"{len(sd['param_groups'])} expected")
    # How Adam runs (fused, foreach, capturable, ...) is this trainer's choice, not the saved
    # one's: a state saved by the multi-tensor Adam must not turn the fused one off (the
    # non-finite guard needs its found_inf).
    groups = [dict(saved_g, params=g["params"], **{k: g[k] for k in ADAM_IMPL_KEYS if k in g})
              for saved_g, g in zip(saved["param_groups"], sd["param_groups"])]
    opt.load_state_dict({"state": {name_to_index[n]: s for n, s in saved["state"].items()},
                         "param_groups": groups})


# --------------------------------------------------------------------------------------------
# Reading and checking.


def read_training_state(path, mmap: bool = False) -> dict:
    """Load and check a training state file -> dict (CPU tensors). One-line errors."""
    path = Path(path)
    data = load_torch(path, "training state", CheckpointError, mmap=mmap,
                      hint="; the file is damaged, resume from another one")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        hint = " (that is a network snapshot; --resume takes training-state-*.pt files)" \
            if fmt == "pggan-snapshot" else ""
        raise CheckpointError(f"{path}: not a pggan training state{hint}")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: training-state version {data.get('version')} is not "
                              f"supported (this pggan reads version {VERSION})")
    required = ("cur_nimg", "step_index", "res", "model", "config", "G", "D", "G_ema",
                "G_opt", "D_opt")
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {', '.join(missing)}; the file is "
                              f"damaged")
    return data


def check_model_compatible(saved_model: dict, model_cfg: ModelConfig, path) -> None:
    """Raise CheckpointError naming every architecture field that differs."""
    diffs = []
    for f in dataclasses.fields(model_cfg):
        if f.name in _FREE_MODEL_FIELDS:
            continue
        now = getattr(model_cfg, f.name)
        if f.name not in saved_model:
            diffs.append(f"model.{f.name} absent (now {now!r})")
        elif saved_model[f.name] != now:
            diffs.append(f"model.{f.name} {saved_model[f.name]!r} (checkpoint) vs {now!r} (now)")
    if diffs:
        raise CheckpointError(f"{path}: the checkpoint's network differs from this run's: "
                              f"{'; '.join(diffs)}; use the same model options, or another "
                              f"--run-dir to start a new run")
    saved_max = int(saved_model.get("max_res", 0))
    if saved_max > model_cfg.max_res:
        raise CheckpointError(f"{path}: the checkpoint was trained with max-res {saved_max}; "
                              f"it cannot continue with --max-res {model_cfg.max_res} (use "
                              f"--max-res {saved_max} or more)")


_RES_KEY = re.compile(r"^(?:blocks|torgb|fromrgb)\.(\d+)\.")


def load_module_state(module: nn.Module, state: dict, saved_max_res: int, what: str,
                      path) -> None:
    """Load `state` into `module`. Tensors of blocks above `saved_max_res` may be missing (a
    smaller run that keeps growing: they keep their initialisation); anything else that does not
    match is an error."""
    own = module.state_dict()
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    missing = []
    for k in own:
        if k in state:
            continue
        m = _RES_KEY.match(k)
        if not (m and int(m.group(1)) > saved_max_res):
            missing.append(k)
    if unexpected or wrong_shape or missing:
        parts = []
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} tensors of another shape (e.g. {k}: "
                         f"{tuple(state[k].shape)} saved, {tuple(own[k].shape)} here)")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        raise CheckpointError(f"{path}: {what} weights do not fit this network: "
                              f"{'; '.join(parts)}")
    module.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------
# The index of a run's training states.


@dataclass
class IndexEntry:
    file: str                   # name inside RUN_DIR/checkpoints
    cur_nimg: int
    kind: str
    boundary_res: Optional[int]
    res: int
    shards: Optional[str] = None    # directory of per-process optimizer shards (DeepSpeed)

    @property
    def kimg(self) -> float:
        return self.cur_nimg / 1000


def _entry_from_state(file: str, data: dict) -> IndexEntry:
    return IndexEntry(file=file, cur_nimg=int(data["cur_nimg"]), kind=str(data.get("kind", "")),
                      boundary_res=data.get("boundary_res"), res=int(data["res"]),
                      shards=data.get("optimizer_shards"))


class CheckpointIndex:
    """RUN_DIR/checkpoints/index.json, reconciled with the files that exist."""

    def __init__(self, directory: Path, entries: List[IndexEntry],
                 unreadable: Optional[List[str]] = None):
        self.directory = Path(directory)
        self.entries = sorted(entries, key=lambda e: e.cur_nimg)
        self.unreadable = unreadable or []      # state files that are not in the index and
                                                # do not load (damaged)

    @classmethod
    def load(cls, directory) -> "CheckpointIndex":
        directory = Path(directory)
        entries: Dict[str, IndexEntry] = {}
        index_path = directory / INDEX_NAME
        if index_path.is_file():
            try:
                meta = json.loads(index_path.read_text(encoding="utf-8"))
                if meta.get("format") != INDEX_FORMAT:
                    raise ValueError("format")
                for e in meta["checkpoints"]:
                    entries[e["file"]] = IndexEntry(file=e["file"], cur_nimg=int(e["cur_nimg"]),
                                                    kind=e["kind"],
                                                    boundary_res=e.get("boundary_res"),
                                                    res=int(e["res"]), shards=e.get("shards"))
            except (ValueError, KeyError, TypeError):
                entries = {}          # a damaged index is rebuilt from the files below
        files = {p.name for p in directory.glob(STATE_GLOB)} if directory.is_dir() else set()
        entries = {k: v for k, v in entries.items() if k in files}
        unreadable = []
        for name in sorted(files - set(entries)):
            # A state written but not yet indexed (killed in between): read its header.
            try:
                data = read_training_state(directory / name, mmap=True)
            except CheckpointError:
                unreadable.append(name)
                continue
            entries[name] = _entry_from_state(name, data)
        return cls(directory, list(entries.values()), unreadable)

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": INDEX_FORMAT, "version": 1,
                "checkpoints": [dataclasses.asdict(e) for e in self.entries]}
        atomic_write_json(self.directory / INDEX_NAME, meta)

    def latest(self) -> Optional[IndexEntry]:
        return self.entries[-1] if self.entries else None

    def boundary(self, res: int) -> Optional[IndexEntry]:
        found = [e for e in self.entries if e.boundary_res == res]
        return found[-1] if found else None

    def add(self, entry: IndexEntry) -> None:
        self.entries = sorted([e for e in self.entries if e.file != entry.file] + [entry],
                              key=lambda e: e.cur_nimg)

    def prune(self, keep_last: int) -> List[str]:
        """Delete all but the newest `keep_last` non-boundary states; -> deleted file names."""
        regular = [e for e in self.entries if e.boundary_res is None]
        doomed = regular[:-keep_last] if keep_last > 0 else regular
        for e in doomed:
            try:
                (self.directory / e.file).unlink()
            except FileNotFoundError:
                pass
            if e.shards:
                shutil.rmtree(self.directory / e.shards, ignore_errors=True)
        names = {e.file for e in doomed}
        self.entries = [e for e in self.entries if e.file not in names]
        return sorted(names)


class NonFiniteStateError(CheckpointError):
    """A training state with NaN/Inf weights or optimizer moments: never written."""


def nonfinite_tensors(tree, prefix: str = "") -> List[str]:
    """Paths of the floating-point tensors in a nested dict/list that hold NaN or Inf."""
    out: List[str] = []
    if torch.is_tensor(tree):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            out.append(prefix or "<tensor>")
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out += nonfinite_tensors(v, f"{prefix}[{i}]")
    return out


def save_training_state(run_dir, payload, keep_last: int) -> Path:
    """Write `payload` (a TrainingState, or its to_payload() dict) atomically, index it, prune
    old states.
    A payload with NaN/Inf tensors is refused (NonFiniteStateError) before anything is written
    or pruned, so pruning only ever drops finite states in favour of newer finite ones. The
    index is written after the state: a failure (disk full) leaves the old index, and a state
    that was renamed into place but not indexed is found from its contents on resume."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, TrainingState):
        payload = payload.to_payload()
    payload = dict(payload, format=FORMAT, version=VERSION)
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}")
    name = state_file_name(payload["cur_nimg"])
    bad = nonfinite_tensors(payload)
    if bad:
        raise NonFiniteStateError(f"{directory / name}: not written, {len(bad)} tensors hold "
                                  f"NaN/Inf (e.g. {bad[0]}); the states already saved are kept")
    atomic_torch_save(directory / name, payload)
    index = CheckpointIndex.load(directory)
    index.add(_entry_from_state(name, payload))
    index.prune(keep_last)
    index.save()
    return directory / name


def remove_stale_temp_files(run_dir) -> List[str]:
    """Delete the temp files a killed writer left in `run_dir` and its checkpoints dir
    (`.<name>.tmp-<pid>...`, pggan.files.atomic_write). Call only while holding the
    run-directory lock: then no other process is writing there. -> removed names."""
    removed = []
    for d in (Path(run_dir), checkpoint_dir(run_dir)):
        if not d.is_dir():
            continue
        for p in d.glob(TEMP_GLOB):
            if p.is_file():
                try:
                    p.unlink()
                    removed.append(p.name)
                except OSError:
                    pass
    return removed


# --------------------------------------------------------------------------------------------
# Which state to resume from.


def _states_dir(path: Path) -> Optional[Path]:
    """A run dir or its checkpoints dir -> the directory holding training states."""
    if (path / CHECKPOINT_DIR).is_dir():
        return path / CHECKPOINT_DIR
    if any(path.glob(STATE_GLOB)) or (path / INDEX_NAME).is_file():
        return path
    return None


def resolve_resume(run_dir, resume: Optional[str], resume_res: Optional[int]) -> Optional[Path]:
    """The training state to start from (None: a fresh run), after checking that continuing
    into `run_dir` overwrites nothing.

      resume None      fresh run; refused if run_dir already holds training states
      resume "auto"    the latest state in run_dir (none: fresh run)
      resume PATH      a training-state file, or a run dir / checkpoints dir (its latest)
      resume_res R     with PATH or auto: the boundary state where the R x R stage began
    """
    run_dir = Path(run_dir)
    own = CheckpointIndex.load(checkpoint_dir(run_dir))
    if own.unreadable:
        # Never guess past a damaged state (and never overwrite it later).
        raise CheckpointError(f"{own.directory / own.unreadable[-1]}: not a readable training "
                              f"state; move it out of {own.directory} or pass --resume PATH "
                              f"with a good one")
    if resume is None:
        if resume_res is not None:
            raise CheckpointError("--resume-res needs --resume PATH (or --resume auto)")
        if own.entries:
            raise CheckpointError(f"{run_dir} already holds training states (up to kimg "
                                  f"{own.latest().kimg:g}): add --resume auto to continue that "
                                  f"run, or choose another --run-dir")
        return None
    if resume == "auto":
        index = own
        if not index.entries:
            if resume_res is not None:
                raise CheckpointError(f"--resume auto --resume-res {resume_res}: {run_dir} "
                                      f"holds no training states")
            return None
        chosen_dir = index.directory
    else:
        path = Path(resume)
        if path.is_file():
            chosen_dir = path.parent
            index = CheckpointIndex.load(chosen_dir)
        elif path.is_dir():
            states = _states_dir(path)
            if states is None:
                raise CheckpointError(f"--resume {path}: no training states there (expected "
                                      f"{CHECKPOINT_DIR}/{STATE_GLOB})")
            chosen_dir, index = states, CheckpointIndex.load(states)
            if not index.entries:
                raise CheckpointError(f"--resume {path}: no readable training states there")
        else:
            raise CheckpointError(f"--resume {path}: no such file or directory")
    if resume_res is not None:
        entry = index.boundary(resume_res)
        if entry is None:
            have = sorted({e.boundary_res for e in index.entries if e.boundary_res is not None})
            raise CheckpointError(
                f"--resume-res {resume_res}: no training state in {chosen_dir} marks the start "
                f"of the {resume_res}x{resume_res} stage (stages with one: "
                f"{', '.join(str(r) for r in have) or 'none'})")
        chosen = chosen_dir / entry.file
    elif resume != "auto" and Path(resume).is_file():
        chosen = Path(resume)
    else:
        chosen = chosen_dir / index.latest().file

    # Continuing into run_dir must not overwrite states of another branch or run.
    if own.entries:
        same_dir = chosen.parent.resolve() == own.directory.resolve()
        if not same_dir:
            raise CheckpointError(f"{run_dir} already holds training states of another run: "
                                  f"use --resume auto to continue it, or pass a new --run-dir")
        data = read_training_state(chosen, mmap=True)
        later = [e for e in own.entries if e.cur_nimg > int(data["cur_nimg"])]
        if later:
            raise CheckpointError(f"{run_dir} holds training states past {chosen.name} (up to "
                                  f"kimg {later[-1].kimg:g}) that this run would overwrite: "
                                  f"pass a new --run-dir to branch from it")
    return chosen
