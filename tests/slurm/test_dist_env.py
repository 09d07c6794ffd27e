"""Rank / world size and the SLURM rendezvous, on faked environments (no SLURM needed)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pggan.training.dist_env import (DistEnvError, expand_nodelist, process_env,
                                     rendezvous_from_slurm)

REPO = Path(__file__).resolve().parents[2]


def slurm_env(nodeid, nodelist="gpu[01-03],dgx-a7", nnodes=4, job_id="731245", **extra):
    env = {"SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": nodelist, "SLURM_NNODES": str(nnodes),
           "SLURM_NODEID": str(nodeid), "SLURM_PROCID": str(nodeid),
           "SLURM_NTASKS": str(nnodes), "SLURM_LOCALID": "0", "SLURM_GPUS_PER_NODE": "8"}
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# process_env


def test_launcher_variables_win_over_slurm():
    # torchrun under one SLURM task per node: every worker sees SLURM_PROCID of its node task.
    for local in range(4):
        env = {"RANK": str(4 + local), "WORLD_SIZE": "8", "LOCAL_RANK": str(local),
               "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
        e = process_env(env)
        assert (e.rank, e.world_size, e.local_rank, e.source) == (4 + local, 8, local, "launcher")


def test_slurm_variables_are_the_fallback():
    e = process_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert (e.rank, e.world_size, e.local_rank, e.source) == (5, 8, 1, "slurm")


def test_no_variables_is_a_single_process():
    e = process_env({})
    assert (e.rank, e.world_size, e.local_rank, e.source) == (0, 1, 0, "single")


@pytest.mark.parametrize("env, message", [
    ({"RANK": "1"}, "WORLD_SIZE is unset"),
    ({"WORLD_SIZE": "2"}, "RANK is unset"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "outside world size 2"),
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "local rank 1 is impossible"),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "2"}, "outside world size 2"),
])
def test_bad_process_variables(env, message):
    with pytest.raises(DistEnvError, match=message):
        process_env(env)


# --------------------------------------------------------------------------------------------
# Host lists


@pytest.mark.parametrize("nodelist, hosts", [
    ("node[01-03,07],gpu-a1", ["node01", "node02", "node03", "node07", "gpu-a1"]),
    ("single", ["single"]),
    ("x[8-10]", ["x8", "x9", "x10"]),
    ("n[1-010]", [f"n{i}" for i in range(1, 11)]),
    ("n[010-12]", ["n010", "n011", "n012"]),
    ("n[9-10,010-011]", ["n9", "n10", "n010", "n011"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a[1],b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("gpu-[1-2].dc", ["gpu-1.dc", "gpu-2.dc"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist, message", [
    ("", "empty"),
    ("n[1-3", "without"),
    ("n1-3]", "without"),
    ("n[[1]]", "nested"),
    ("n[]", "empty brackets"),
    ("n[3-1]", "runs backwards"),
    ("n[a-b]", "bad range"),
    ("a,,b", "empty entry"),
])
def test_bad_nodelist(nodelist, message):
    with pytest.raises(DistEnvError, match=message):
        expand_nodelist(nodelist)


# --------------------------------------------------------------------------------------------
# Rendezvous of a multi-node job


def test_rendezvous_on_every_node_of_a_four_node_job():
    seen = []
    for nodeid in range(4):
        r = rendezvous_from_slurm(slurm_env(nodeid))
        seen.append(r)
        assert r.machine_rank == nodeid
        args = r.accelerate_args()
        assert args == ["--multi_gpu", "--num_machines", "4", "--machine_rank", str(nodeid),
                        "--main_process_ip", "gpu01", "--main_process_port", "21245",
                        "--num_processes", "32", "--rdzv_backend", "static", "--same_network"]
        assert r.torchrun_args() == ["--nnodes", "4", "--node_rank", str(nodeid),
                                     "--nproc_per_node", "8", "--master_addr", "gpu01",
                                     "--master_port", "21245"]
    # Everything but the machine rank is the same on every node.
    assert len({(r.main_process_ip, r.main_process_port, r.num_processes) for r in seen}) == 1


def test_single_node_job_has_no_multi_node_flags():
    r = rendezvous_from_slurm(slurm_env(0, nodelist="vm", nnodes=1, PGGAN_GPUS_PER_NODE="2",
                                        PGGAN_USE_CPU="1"))
    assert r.use_cpu and r.num_processes == 2
    assert "--rdzv_backend" not in r.accelerate_args()


def test_port_comes_from_the_environment_first():
    assert rendezvous_from_slurm(
        slurm_env(1, PGGAN_MAIN_PROCESS_PORT="31000", MASTER_PORT="32000")).main_process_port \
        == 31000
    assert rendezvous_from_slurm(slurm_env(1, MASTER_PORT="32000")).main_process_port == 32000
    # Different jobs on the same first node get different default ports.
    ports = {rendezvous_from_slurm(slurm_env(0, job_id=str(j))).main_process_port
             for j in range(100, 110)}
    assert len(ports) == 10 and all(20000 <= p < 30000 for p in ports)


@pytest.mark.parametrize("extra, per_node", [
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:2"}, 4),
    ({"SLURM_GPUS_PER_NODE": "", "SLURM_GPUS_ON_NODE": "6"}, 6),
    ({"PGGAN_GPUS_PER_NODE": "3"}, 3),
])
def test_processes_per_node(extra, per_node):
    r = rendezvous_from_slurm(slurm_env(0, **extra))
    assert r.procs_per_node == per_node and r.num_processes == 4 * per_node


@pytest.mark.parametrize("env, message", [
    ({"SLURM_NNODES": "3"}, "names 4 hosts"),
    ({"SLURM_NODEID": "4"}, "outside 0..3"),
    ({"SLURM_JOB_NODELIST": ""}, "SLURM_JOB_NODELIST is unset"),
    ({"SLURM_GPUS_PER_NODE": ""}, "no GPU count"),
    ({"SLURM_GPUS_PER_NODE": "lots"}, "not a GPU count"),
    ({"PGGAN_GPUS_PER_NODE": "0"}, "must be >= 1"),
    ({"PGGAN_MAIN_PROCESS_PORT": "80"}, "not a port"),
])
def test_bad_slurm_environment(env, message):
    with pytest.raises(DistEnvError, match=message):
        rendezvous_from_slurm(slurm_env(0, **env))


# --------------------------------------------------------------------------------------------
# Command line, as slurm/node-launch.sh calls it


def run_cli(env, *args):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PGGAN_"))}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pggan.training.dist_env", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_shell_quoted_launcher_arguments():
    out = run_cli(slurm_env(2, nodelist="n[1-3],login'x", PGGAN_MAIN_PROCESS_PORT="29999"),
                  "--accelerate-args")
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout) == [
        "--multi_gpu", "--num_machines", "4", "--machine_rank", "2", "--main_process_ip", "n1",
        "--main_process_port", "29999", "--num_processes", "32", "--rdzv_backend", "static",
        "--same_network"]


def test_cli_error_is_one_line():
    out = run_cli({"SLURM_NNODES": "2"}, "--torchrun-args")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "dist_env: SLURM_JOB_NODELIST is unset: run inside a SLURM allocation "
        "(sbatch slurm/train.sbatch)"]
