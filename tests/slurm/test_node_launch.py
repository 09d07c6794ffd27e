"""slurm/node-launch.sh outside SLURM, on a faked allocation: the derived rendezvous really
starts the processes (one node with 2 CPU processes; two "nodes" on this machine), and USR1
reaches the training processes, which checkpoint and are resumed from it."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

WHO_AM_I = """
import os
import torch.distributed as dist
from pggan.training.dist_env import process_env
dist.init_process_group("gloo")
e = process_env()
print(f"worker rank={e.rank} world={e.world_size} local={e.local_rank} "
      f"dist={dist.get_rank()}/{dist.get_world_size()} node={os.environ['SLURM_NODEID']}",
      flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def fake_allocation(nodeid, nnodes, procs_per_node, launcher, job_id):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PGGAN_"))}
    env.update(SLURM_JOB_ID=str(job_id), SLURM_JOB_NODELIST=",".join(["localhost"] * nnodes),
               SLURM_NNODES=str(nnodes), SLURM_NODEID=str(nodeid), SLURM_PROCID=str(nodeid),
               SLURM_NTASKS=str(nnodes), PGGAN_GPUS_PER_NODE=str(procs_per_node),
               PGGAN_USE_CPU="1", PGGAN_LAUNCHER=launcher, PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    return env


def node_launch(env, *args, **kw):
    return subprocess.Popen(["bash", str(REPO / "slurm" / "node-launch.sh"), *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def workers(output):
    return sorted(re.findall(r"worker rank=(\d+) world=(\d+) local=(\d+) dist=(\d+)/(\d+) "
                             r"node=(\d+)", output))


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_one_node_two_cpu_processes(tmp_path, launcher):
    script = tmp_path / "who.py"
    script.write_text(WHO_AM_I)
    proc = node_launch(fake_allocation(0, 1, 2, launcher, 5101), script)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert workers(out) == [("0", "2", "0", "0", "2", "0"), ("1", "2", "1", "1", "2", "0")], out


@pytest.mark.parametrize("launcher", ["accelerate"])
def test_two_nodes_meet_at_the_first_host(tmp_path, launcher):
    script = tmp_path / "who.py"
    script.write_text(WHO_AM_I)
    procs = [node_launch(fake_allocation(n, 2, 1, launcher, 5102), script) for n in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # Machine rank = SLURM_NODEID; one process per node; global ranks 0 and 1.
    assert workers(outs[0]) == [("0", "2", "0", "0", "2", "0")], outs[0]
    assert workers(outs[1]) == [("1", "2", "0", "1", "2", "1")], outs[1]


def read_until(proc, pattern, timeout_s, seen):
    """Read proc's output lines until one matches pattern; return the match."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s}s:\n" + "".join(seen))


@pytest.mark.slow
def test_usr1_to_every_process_checkpoints_and_the_next_launch_resumes(tmp_path):
    # srun delivers a forwarded signal to every process of the step: node-launch.sh, the
    # launcher, the training processes and their data-loader workers. Signal the whole process
    # group the same way; only the training processes may act on it.
    run_dir = tmp_path / "run"
    env = fake_allocation(0, 1, 2, "accelerate", 5103)
    train = [REPO / "pggan" / "train.py", "--resume", "auto", "--config", "demo-cpu",
             "--max-res", "8", "--total-kimg", "1", "--set", "schedule.fade_kimg=0.5",
             "--set", "schedule.stab_kimg=0.5", "--tick-kimg", "0.1", "--snapshot-kimg", "100",
             "--num-workers", "1", "--run-dir", run_dir]
    seen = []
    proc = node_launch(env, *train, start_new_session=True)
    try:
        read_until(proc, r"^tick \d+ .* kimg (?!0\.0+/)", 120, seen)
        os.killpg(proc.pid, signal.SIGUSR1)
        name = read_until(proc, r"training state (training-state-(\d+)\.pt) \(signal\)", 60,
                          seen)
        out = "".join(seen) + proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved_nimg = int(name[2])
    # The launcher outlived the signal (it ignores USR1) and reported the trainers' exit.
    assert proc.returncode != 128 + signal.SIGUSR1, out
    assert "stopped by signal SIGUSR1" in out and "exitcode  : 3" in out, out
    assert (run_dir / "checkpoints" / name[1]).is_file() and 0 < saved_nimg < 1000

    rerun = node_launch(env, *train)
    out2, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out2
    assert f"resuming at kimg {saved_nimg / 1000:g};" in out2, out2
    assert "done: kimg 1.024 " in out2, out2
