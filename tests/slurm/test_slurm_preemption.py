"""A real one-node SLURM cluster (slurm/local-cluster-start.sh): slurm/train.sbatch runs a CPU
training job with 2 processes; USR1 to the batch shell (what SLURM sends 120 s before a time
limit) must produce a checkpoint, a requeue, and a second run that resumes at the saved
cur_nimg and finishes.

Needs root and Debian's slurm-wlm + munge; the test starts and stops the daemons itself.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pggan.training.checkpoint import read_training_state
from pggan.training.dist_env import expand_nodelist

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def run(cmd, env, timeout=30):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld is not installed (apt-get install -y slurm-wlm munge)")
    # Not under pytest's tmp dir: its parent is private to root and munged runs as 'munge'.
    state = Path(tempfile.mkdtemp(prefix="pggan-slurm-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PGGAN_"))}
    env.update(LOCAL_SLURM_CTLD_PORT=str(free_port()), LOCAL_SLURM_SLURMD_PORT=str(free_port()))
    started = run(["bash", str(SLURM_DIR / "local-cluster-start.sh"), str(state)], env, 120)
    try:
        assert started.returncode == 0, f"cluster did not start:\n{started.stdout}{started.stderr}"
        env["SLURM_CONF"] = str(state / "slurm.conf")
        yield env, state
    finally:
        stopped = run(["bash", str(SLURM_DIR / "local-cluster-stop.sh"), str(state)], env, 120)
        leftover = [f for f in ("munged.pid", "slurmctld.pid", "slurmd.pid")
                    if (state / f).exists()]
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0 and not leftover, stopped.stderr


def job_fields(env, job_id) -> dict:
    out = run(["scontrol", "show", "job", "-o", job_id], env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(what, predicate, timeout_s, describe):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {timeout_s}s\n{describe()}")


def test_scontrol_expands_host_lists_as_we_do(cluster):
    env, _ = cluster
    for nodelist in ("node[01-03,07],gpu-a1", "r[1-2]n[1-2]", "n[1-010]", "n[9-10,010-011]"):
        out = run(["scontrol", "show", "hostnames", nodelist], env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == expand_nodelist(nodelist)


def test_usr1_checkpoints_requeues_and_resumes(cluster, tmp_path):
    env, state = cluster
    run_dir = tmp_path / "run"
    log = tmp_path / "job.out"
    job_env = dict(env, PGGAN_USE_CPU="1", PGGAN_GPUS_PER_NODE="2", OMP_NUM_THREADS="1")
    submitted = run(["sbatch", "--parsable", "--gpus-per-node=0", f"--output={log}",
                     f"--chdir={REPO}", str(SLURM_DIR / "train.sbatch"),
                     *train_args(run_dir)], job_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]

    def output():
        return log.read_text() if log.exists() else ""

    def describe():
        ctld = (state / "slurmctld.log").read_text()[-3000:]
        return f"--- job output\n{output() or '(none)'}\n--- scontrol\n" \
               f"{job_fields(env, job_id)}\n--- slurmctld.log (tail)\n{ctld}"

    # A tick after the first training steps: the trainer is training, not starting up.
    wait_for("a training tick", lambda: re.search(r"^tick \d+ .* kimg (?!0\.0+/)", output(),
                                                  re.M), 150, describe)
    signalled = run(["scancel", "--signal=USR1", "--batch", job_id], env)
    assert signalled.returncode == 0, signalled.stderr

    wait_for("the end of the requeued job",
             lambda: job_fields(env, job_id).get("JobState") in ("COMPLETED", "FAILED",
                                                                 "CANCELLED", "TIMEOUT"),
             150, describe)
    fields, text = job_fields(env, job_id), output()
    assert fields["JobState"] == "COMPLETED", describe()
    assert fields["Restarts"] == "1", describe()
    assert "restart 0," in text and "restart 1," in text and "requeueing job" in text, describe()
    check_resumed_at_the_signal_checkpoint(text, run_dir, describe)


# The trainer's part: 4x4 then 8x8 on the built-in synthetic source, 47 steps of 32 images.
TOTAL_NIMG = 1504


def train_args(run_dir):
    return ["--config", "demo-cpu", "--max-res", "8", "--total-kimg", "1.5",
            "--set", "schedule.fade_kimg=0.5", "--set", "schedule.stab_kimg=0.5",
            "--tick-kimg", "0.1", "--snapshot-kimg", "100", "--num-workers", "0",
            "--run-dir", str(run_dir)]


def check_resumed_at_the_signal_checkpoint(text, run_dir, describe):
    """The first run saved a training state when USR1 arrived and exited; the second one
    started from that state and trained to the end."""
    first, stop_line, second = text.partition("stopped by signal SIGUSR1")
    assert stop_line and "stopped by signal" not in second, describe()
    saved_name, kind = re.findall(r"training state (training-state-\d+\.pt) \((\w+)\)",
                                  first)[-1]
    saved_nimg = int(re.fullmatch(r"training-state-(\d+)\.pt", saved_name)[1])
    assert kind in ("signal", "boundary", "interval") and 0 < saved_nimg < TOTAL_NIMG
    saved = run_dir / "checkpoints" / saved_name
    assert read_training_state(saved)["cur_nimg"] == saved_nimg
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert saved_name in [e["file"] for e in index["checkpoints"]]

    assert re.findall(r"pggan-train: resuming from (\S+)", second) == [str(saved)], describe()
    assert f"resuming at kimg {saved_nimg / 1000:g};" in second, describe()
    assert f"done: kimg {TOTAL_NIMG / 1000:g} " in second, describe()

    # stats.jsonl: the first run's ticks end at the saved count, the second run's start there.
    ticks = [json.loads(line)["cur_nimg"]
             for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    restarts = [i for i in range(1, len(ticks)) if ticks[i] <= ticks[i - 1]]
    assert len(restarts) == 1, ticks
    i = restarts[0]
    assert ticks[i - 1] == ticks[i] == saved_nimg, ticks
    assert ticks[0] == 0 and ticks[-1] == TOTAL_NIMG, ticks
