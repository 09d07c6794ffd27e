"""Where this process sits in a distributed run, and how a SLURM job starts one.

Two questions, answered from environment variables only (no scontrol, no network):

* `process_env()`: this process's rank / world size / local rank. The launcher's variables
  (RANK, WORLD_SIZE, LOCAL_RANK, as set by `accelerate launch` and torchrun) come first;
  SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID only when no launcher set them. The order
  matters: with one SLURM task per node, every worker torchrun starts on a node inherits the
  same SLURM_PROCID, so the SLURM variables alone would give every worker rank 0.

* `rendezvous_from_slurm()`: the arguments `slurm/train.sbatch` gives the launcher on each node
  of an allocation: main process = first host of SLURM_JOB_NODELIST, machine rank =
  SLURM_NODEID, num_machines = SLURM_NNODES, num_processes = nodes x processes per node,
  and a port that every node derives identically (from the environment, else from the job id).

`python -m pggan.training.dist_env --accelerate-args` prints those arguments for
`accelerate launch`, `--torchrun-args` the same for torchrun; a bad environment exits with
a one-line message naming the variable.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

# Default rendezvous port = PORT_BASE + job_id % PORT_SPAN: identical on every node of the job
# (they all see the same SLURM_JOB_ID), different for jobs sharing a first node, and inside
# 20000..29999, below the usual Linux ephemeral range (32768..60999).
PORT_BASE = 20000
PORT_SPAN = 10000

# Variables that name the port explicitly, first match wins.
PORT_VARS = ("PGGAN_MAIN_PROCESS_PORT", "MASTER_PORT")


class DistEnvError(ValueError):
    """A missing or malformed launcher / SLURM variable, worded for the user."""


# --------------------------------------------------------------------------------------------
# This process.


@dataclass(frozen=True)
class ProcessEnv:
    rank: int               # global rank, 0 .. world_size-1
    world_size: int         # number of processes in the run
    local_rank: int         # rank on this machine (index of the GPU it drives)
    source: str             # "launcher" | "slurm" | "single": which variables decided


def _int_var(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise DistEnvError(f"{name}={raw!r} is not an integer") from None


def process_env(env: Optional[Mapping[str, str]] = None) -> ProcessEnv:
    """Rank, world size and local rank of this process.

    RANK / WORLD_SIZE / LOCAL_RANK (accelerate launch, torchrun) win; SLURM_PROCID /
    SLURM_NTASKS / SLURM_LOCALID (one process per SLURM task, e.g. `srun python ...`) are the
    fallback; with neither, a single process.
    """
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        for name in ("RANK", "WORLD_SIZE"):
            if name not in env:
                raise DistEnvError(f"{name} is unset while "
                                   f"{'WORLD_SIZE' if name == 'RANK' else 'RANK'} is set: "
                                   f"start the run with accelerate launch or torchrun")
        rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        local = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        source = "launcher"
    elif "SLURM_PROCID" in env:
        rank = _int_var(env, "SLURM_PROCID")
        world = _int_var(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else 1
        local = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        source = "slurm"
    else:
        return ProcessEnv(rank=0, world_size=1, local_rank=0, source="single")
    if world < 1 or not 0 <= rank < world:
        raise DistEnvError(f"rank {rank} is outside world size {world} ({source} variables)")
    if local < 0 or local > rank:
        raise DistEnvError(f"local rank {local} is impossible for rank {rank} "
                           f"({source} variables)")
    return ProcessEnv(rank=rank, world_size=world, local_rank=local, source=source)


# --------------------------------------------------------------------------------------------
# SLURM host lists: "node[01-03,07],gpu-a1" -> ["node01", "node02", "node03", "node07", "gpu-a1"].


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise DistEnvError(f"host list {text!r}: nested '['")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise DistEnvError(f"host list {text!r}: ']' without '['")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise DistEnvError(f"host list {text!r}: '[' without ']'")
    parts.append(text[start:])
    return parts


def _expand_range_set(body: str, whole: str) -> list[str]:
    """'01-03,07' -> ['01', '02', '03', '07']; a zero-padded lower bound fixes the width."""
    out = []
    for item in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise DistEnvError(f"host list {whole!r}: bad range {item!r} in [{body}]")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            out.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise DistEnvError(f"host list {whole!r}: range {item!r} runs backwards")
        width = len(lo_s) if lo_s.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list expression (as in SLURM_JOB_NODELIST) in order.

    Supports comma-separated names, bracketed ranges and lists with zero padding
    (`node[001-003,010]`) and several bracket groups in one name (`r[1-2]n[1-2]` -> r1n1, r1n2,
    r2n1, r2n2, the same order as `scontrol show hostnames`).
    """
    text = nodelist.strip()
    if not text:
        raise DistEnvError("SLURM_JOB_NODELIST is empty")
    hosts: list[str] = []
    for part in _split_top_level(text):
        part = part.strip()
        if not part:
            raise DistEnvError(f"host list {nodelist!r}: empty entry")
        names = [""]
        for m in re.finditer(r"([^\[\]]*)(?:\[([^\]]*)\])?", part):
            literal, body = m.group(1), m.group(2)
            if body is None:
                names = [n + literal for n in names]
                continue
            if not body.strip():
                raise DistEnvError(f"host list {nodelist!r}: empty brackets in {part!r}")
            choices = _expand_range_set(body, nodelist)
            names = [n + literal + c for n in names for c in choices]
        hosts.extend(names)
    return hosts


# --------------------------------------------------------------------------------------------
# Rendezvous of a SLURM job: one launcher per node.


@dataclass(frozen=True)
class Rendezvous:
    num_machines: int       # nodes in the allocation (SLURM_NNODES)
    machine_rank: int       # this node's index (SLURM_NODEID); 0 hosts the main process
    main_process_ip: str    # first host of SLURM_JOB_NODELIST
    main_process_port: int
    procs_per_node: int     # GPUs per node, or CPU processes per node with PGGAN_USE_CPU=1
    use_cpu: bool           # gloo processes on CPU instead of one process per GPU

    @property
    def num_processes(self) -> int:
        return self.num_machines * self.procs_per_node

    def accelerate_args(self) -> list[str]:
        """Arguments for `accelerate launch` on this node (before the training script)."""
        args = ["--multi_gpu",
                "--num_machines", str(self.num_machines),
                "--machine_rank", str(self.machine_rank),
                "--main_process_ip", self.main_process_ip,
                "--main_process_port", str(self.main_process_port),
                "--num_processes", str(self.num_processes)]
        if self.num_machines > 1:
            # All nodes reach the main host on the cluster network; accelerate asks otherwise.
            args += ["--rdzv_backend", "static", "--same_network"]
        return args

    def torchrun_args(self) -> list[str]:
        """Arguments for torchrun on this node (before the training script)."""
        return ["--nnodes", str(self.num_machines),
                "--node_rank", str(self.machine_rank),
                "--nproc_per_node", str(self.procs_per_node),
                "--master_addr", self.main_process_ip,
                "--master_port", str(self.main_process_port)]


def _count_from_gres(value: str) -> Optional[int]:
    """SLURM_GPUS_PER_NODE is '8', 'a100:8' or, for several types, 'a100:4,v100:4'."""
    total = 0
    for item in value.split(","):
        m = re.fullmatch(r"(?:[^:]+:)*(\d+)(?:\(.*\))?", item.strip())
        if not m:
            return None
        total += int(m.group(1))
    return total


def procs_per_node_from_env(env: Mapping[str, str]) -> int:
    """Processes per node: PGGAN_GPUS_PER_NODE, else the GPUs SLURM gave the job on a node."""
    if "PGGAN_GPUS_PER_NODE" in env:
        n = _int_var(env, "PGGAN_GPUS_PER_NODE")
        if n < 1:
            raise DistEnvError(f"PGGAN_GPUS_PER_NODE must be >= 1 (got {n})")
        return n
    for name in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        if env.get(name, "").strip():
            n = _count_from_gres(env[name])
            if n is None:
                raise DistEnvError(f"{name}={env[name]!r} is not a GPU count; "
                                   f"set PGGAN_GPUS_PER_NODE")
            if n >= 1:
                return n
    raise DistEnvError("no GPU count: request GPUs with sbatch --gpus-per-node=G or set "
                       "PGGAN_GPUS_PER_NODE (CPU processes per node with PGGAN_USE_CPU=1)")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def rendezvous_from_slurm(env: Optional[Mapping[str, str]] = None) -> Rendezvous:
    """Derive the launcher rendezvous for this node of a SLURM allocation."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise DistEnvError("SLURM_JOB_NODELIST is unset: run inside a SLURM allocation "
                           "(sbatch slurm/train.sbatch)")
    hosts = expand_nodelist(nodelist)
    for name in ("SLURM_NNODES", "SLURM_NODEID"):
        if name not in env:
            raise DistEnvError(f"{name} is unset: run inside a SLURM allocation")
    num_machines, machine_rank = _int_var(env, "SLURM_NNODES"), _int_var(env, "SLURM_NODEID")
    if num_machines != len(hosts):
        raise DistEnvError(f"SLURM_NNODES={num_machines} but SLURM_JOB_NODELIST={nodelist!r} "
                           f"names {len(hosts)} hosts")
    if not 0 <= machine_rank < num_machines:
        raise DistEnvError(f"SLURM_NODEID={machine_rank} is outside 0..{num_machines - 1}")

    port = None
    for name in PORT_VARS:
        if env.get(name, "").strip():
            port = _int_var(env, name)
            if not 1024 <= port <= 65535:
                raise DistEnvError(f"{name}={port} is not a port in 1024..65535")
            break
    if port is None:
        job_var = "SLURM_JOB_ID" if "SLURM_JOB_ID" in env else "SLURM_JOBID"
        if job_var not in env:
            raise DistEnvError("SLURM_JOB_ID is unset: set PGGAN_MAIN_PROCESS_PORT")
        port = PORT_BASE + _int_var(env, job_var) % PORT_SPAN

    return Rendezvous(num_machines=num_machines, machine_rank=machine_rank,
                      main_process_ip=hosts[0], main_process_port=port,
                      procs_per_node=procs_per_node_from_env(env),
                      use_cpu=_truthy(env.get("PGGAN_USE_CPU", "")))


# --------------------------------------------------------------------------------------------
# Command line, used by slurm/train.sbatch on every node.


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pggan.training.dist_env",
        description="Print the launcher arguments for this node of a SLURM job, derived from "
                    "SLURM_JOB_NODELIST, SLURM_NNODES, SLURM_NODEID, SLURM_JOB_ID and "
                    "PGGAN_GPUS_PER_NODE / PGGAN_MAIN_PROCESS_PORT / PGGAN_USE_CPU.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--accelerate-args", action="store_true",
                      help="arguments for `accelerate launch`, shell-quoted on one line")
    what.add_argument("--torchrun-args", action="store_true",
                      help="arguments for torchrun, shell-quoted on one line")
    what.add_argument("--describe", action="store_true",
                      help="one human-readable line: hosts, ranks, port")
    args = parser.parse_args(argv)
    try:
        rdzv = rendezvous_from_slurm()
    except DistEnvError as e:
        print(f"dist_env: {e}", file=sys.stderr)
        return 2
    if args.describe:
        print(f"machine {rdzv.machine_rank}/{rdzv.num_machines}, "
              f"{rdzv.procs_per_node} {'CPU' if rdzv.use_cpu else 'GPU'} processes per node, "
              f"{rdzv.num_processes} in all, main process "
              f"{rdzv.main_process_ip}:{rdzv.main_process_port}")
        return 0
    out = rdzv.accelerate_args() if args.accelerate_args else rdzv.torchrun_args()
    print(shlex.join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
