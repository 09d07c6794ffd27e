"""Shared pieces of the training tests: a tiny CPU configuration, running the real CLI in a
subprocess, waiting for checkpoints, comparing training states bit for bit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "pggan" / "train.py"

# Tiny nets and short stages: 4x4 for 8 steps of 8 images, 8x8 fades in over 8 steps and
# stabilises 8, 16x16 fades in over 8 and runs to 0.4 kimg (50 steps in all).
TINY_YAML = """\
model: {max_res: 16, fmap_base: 64, fmap_max: 16, latent_dim: 16, mbstd_group: 4}
schedule:
  fade_kimg: 0.064
  stab_kimg: 0.064
  batch_by_res: {4: 8, 8: 8, 16: 8}
  batch_default: 8
  batch_per_gpu_by_res: {}
  lr_by_res: {}
ema: {ema_kimg: 0.05}
data: {num_workers: 0}
train: {total_kimg: 0.4, snapshot_kimg: 0.1, tick_kimg: 0.05, grid_size: 4, keep_last: 2}
"""
TINY_TOTAL_NIMG = 400


def write_tiny_config(directory: Path) -> Path:
    path = Path(directory) / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def cli_env() -> dict:
    env = dict(os.environ)
    # One thread per process: on a loaded 2-core machine two threads per tiny conv are ~10x
    # slower than one, and both processes of a 2-process run share the cores.
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


DIST_WORKER = Path(__file__).resolve().parent / "dist_worker.py"


def train_cmd(args, nproc: int = 1, script: Path = TRAIN_PY) -> list:
    if nproc == 1:
        return [sys.executable, str(script)] + [str(a) for a in args]
    # torchrun, 2 CPU processes over gloo (`accelerate launch --cpu --num_processes 2` would
    # start only one).
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", str(script)] + [str(a) for a in args]


def run_train(args, nproc: int = 1, timeout: float = 300, cwd=None,
              script: Path = TRAIN_PY) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(args, nproc, script), env=cli_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_train(args, nproc: int = 1, log_path: Path = None) -> subprocess.Popen:
    """Start a run in its own session (so killpg reaches torchrun's workers too)."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(train_cmd(args, nproc), env=cli_env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def listing(directory):
    """{relative path: (size, mtime_ns)} of everything under `directory`."""
    out = {}
    for root, _dirs, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, directory)] = (st.st_size, st.st_mtime_ns)
    return out


def index_entries(run_dir: Path) -> list:
    path = Path(run_dir) / "checkpoints" / "index.json"
    try:
        return json.loads(path.read_text())["checkpoints"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, kinds=("interval",),
                        timeout: float = 240) -> dict:
    """Poll the index until an entry of `kinds` appears; the process must still be running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in index_entries(run_dir):
            if e["kind"] in kinds:
                return e
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before a {kinds} "
                                 f"checkpoint appeared")
        time.sleep(0.02)
    raise AssertionError(f"no {kinds} checkpoint within {timeout} s")


def descendants(pid: int) -> list:
    """PIDs of all processes below `pid` (from /proc), children first."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_run(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Send `sig` to a run and, for SIGKILL, to every process it started: torchrun puts its
    workers in sessions of their own, so killing the launcher's group alone would leave them
    training (a machine failure kills everything at once)."""
    if sig == signal.SIGKILL:
        for pid in [proc.pid] + descendants(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    else:
        os.killpg(proc.pid, sig)


def final_state(run_dir: Path, cur_nimg: int = TINY_TOTAL_NIMG) -> dict:
    path = Path(run_dir) / "checkpoints" / f"training-state-{cur_nimg:012d}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)


def tensor_diffs(a, b, path: str = "") -> list:
    """Paths where two nested dicts of tensors / values differ (bitwise for tensors)."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b if isinstance(b, dict) else {}))}"]
        out = []
        for k in a:
            out += tensor_diffs(a[k], b[k], f"{path}.{k}")
        return out
    if torch.is_tensor(a):
        if not torch.is_tensor(b) or a.shape != b.shape or a.dtype != b.dtype:
            return [f"{path}: shape/dtype"]
        return [] if torch.equal(a, b) else [
            f"{path}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += tensor_diffs(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def assert_states_equal(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema", "G_opt", "D_opt"):
        diffs = tensor_diffs(a[key], b[key], key)
        assert not diffs, f"{key} differs: {diffs[:5]}"
    assert (a["cur_nimg"], a["step_index"]) == (b["cur_nimg"], b["step_index"])
