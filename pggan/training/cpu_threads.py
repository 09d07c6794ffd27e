"""Torch's CPU thread count for training, chosen by the trainer instead of by the user.

torch starts one intra-op thread per core it may run on, whatever else runs there: the other
processes of a multi-process run on the node and other programs. Threads that share a core with
other work wait for each other at every parallel region: on a 2-core machine whose other core
was busy, torch's default 2 threads ran the demo 25x slower than 1 thread (README, 2026-11-22).

So, unless the user set OMP_NUM_THREADS (then torch's own reading of it stands), a new run
takes, per process, its share of the cores it may run on (os.sched_getaffinity divided by the
node's processes, LOCAL_WORLD_SIZE) less its share of the cores other programs keep busy at
start (the 1-minute load average, rounded), at least 1. A resumed run takes the count its
training state recorded: CPU weight gradients depend on the thread count (reductions split
per thread; measured 5e-9 apart at 1 vs 2 threads), and a resumed run must compute bit for bit
what the uninterrupted one does.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

USER_VARS = ("OMP_NUM_THREADS",)    # set by the user: torch's choice (which reads it) is kept


def threads_for(local_processes: int, cores: int, busy_cores: float) -> int:
    """Threads per process: an equal share of the cores not busy with other programs."""
    local_processes = max(1, int(local_processes))
    free = max(0, cores - int(round(busy_cores)))
    return max(1, min(cores // local_processes, free // local_processes))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # no affinity API (macOS): every core
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores other programs keep busy: the 1-minute load average (0 where there is none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def local_processes(env: Mapping[str, str]) -> int:
    """Processes of this run on this node, from the launcher (torchrun and accelerate:
    LOCAL_WORLD_SIZE; SLURM: SLURM_NTASKS_PER_NODE); 1 when it does not say."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def choose_cpu_threads(saved: Optional[int] = None,
                       env: Mapping[str, str] = os.environ) -> Optional[int]:
    """The count for this run (`saved`: the resumed state's); None: the user's OMP_NUM_THREADS
    stands."""
    if any(env.get(name) for name in USER_VARS):
        return None
    if saved is not None and int(saved) > 0:
        return int(saved)
    return threads_for(local_processes(env), available_cores(), busy_cores())


def set_cpu_threads(saved: Optional[int] = None,
                    env: Mapping[str, str] = os.environ) -> int:
    """Apply the choice to torch (a process-wide setting: training owns its process).
    -> the intra-op thread count torch now uses."""
    import torch
    n = choose_cpu_threads(saved, env)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
