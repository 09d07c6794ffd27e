"""Network snapshots for inference: G_ema + the model config, no code pickled.

A snapshot is a torch.save'd dict:
  {"format": "pggan-snapshot", "version": 1, "model": ModelConfig as dict,
   "G_ema": state_dict, "res": int, "alpha": float, "cur_nimg": int, "extra": {...}}
Loading rebuilds the network from the config and loads the weights with weights_only=True.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError, ModelConfig, config_from_dict, Config
from .files import atomic_torch_save, load_torch
from .nets import build_generator

FORMAT = "pggan-snapshot"
VERSION = 1


class SnapshotError(ValueError):
    """A snapshot that cannot be used, worded as a one-line message."""


def save_snapshot(path, G_ema: torch.nn.Module, model_cfg: ModelConfig, res: int, alpha: float,
                  cur_nimg: int, extra: Optional[dict] = None) -> None:
    state = {k: v.detach().cpu() for k, v in G_ema.state_dict().items()}
    atomic_torch_save(path, {"format": FORMAT, "version": VERSION,
                             "model": dataclasses.asdict(model_cfg), "G_ema": state,
                             "res": int(res), "alpha": float(alpha), "cur_nimg": int(cur_nimg),
                             "extra": extra or {}})


def read_snapshot(path) -> dict:
    path = Path(path)
    data = load_torch(path, "snapshot", SnapshotError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a pggan network snapshot (training states are "
                            f"read with --resume; snapshots are network-snapshot-*.pt)")
    if data.get("version") != VERSION:
        raise SnapshotError(f"{path}: snapshot version {data.get('version')} is not supported "
                            f"(expected {VERSION})")
    return data


def load_snapshot(path, device="cpu", expect_arch: Optional[str] = None):
    """-> (G_ema in eval mode on `device`, snapshot dict). Clear errors for bad files."""
    data = read_snapshot(path)
    try:
        model_cfg = config_from_dict({"model": data["model"]}, Config()).model
    except ConfigError as e:
        raise SnapshotError(f"{path}: model config does not load ({e})") from None
    if expect_arch is not None and model_cfg.arch != expect_arch:
        raise SnapshotError(f"{path}: snapshot is arch={model_cfg.arch}, expected {expect_arch}")
    G = build_generator(model_cfg)
    missing, unexpected = G.load_state_dict(data["G_ema"], strict=False)
    if missing or unexpected:
        raise SnapshotError(f"{path}: weights do not match the {model_cfg.arch} network of its "
                            f"config (missing {len(missing)}, unexpected {len(unexpected)}, "
                            f"e.g. {(missing + unexpected)[0]})")
    return G.to(device).eval().requires_grad_(False), data
