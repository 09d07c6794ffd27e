"""Fixtures of the training tests: one uninterrupted tiny CLI run, shared by the end-to-end
tests (its outputs, and the reference for the exact-resume comparisons)."""
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainkit import DIST_WORKER, run_train, write_tiny_config


@dataclass
class TinyRun:
    config: Path            # the YAML preset every test run uses
    run_dir: Path
    stdout: str
    stderr: str
    returncode: int


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    base = tmp_path_factory.mktemp("tiny")
    config = write_tiny_config(base)
    run_dir = base / "run-A"
    proc = run_train(["--config", config, "--run-dir", run_dir, "--resume", "auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return TinyRun(config, run_dir, proc.stdout, proc.stderr, proc.returncode)


@dataclass
class TwoProcessRun:
    run_dir: Path
    ranks_dir: Path         # rank0.pt, rank1.pt: each rank's networks and Adam states at the end


@pytest.fixture(scope="session")
def two_proc_run(tiny_run, tmp_path_factory) -> TwoProcessRun:
    """The tiny run again with 2 processes (torchrun, gloo), same global batch (2 x 4)."""
    base = tmp_path_factory.mktemp("tiny2")
    run_dir, ranks_dir = base / "run-A2", base / "ranks"
    ranks_dir.mkdir()
    proc = run_train([ranks_dir, "--config", tiny_run.config, "--run-dir", run_dir,
                      "--resume", "auto"], nproc=2, script=DIST_WORKER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return TwoProcessRun(run_dir, ranks_dir)


@pytest.fixture
def one_thread():
    """In-process training tests: one intra-op thread (see trainkit.cli_env)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
