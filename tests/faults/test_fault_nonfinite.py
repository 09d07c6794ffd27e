"""Non-finite guard: a NaN in D's loss at one step (tests/faults/fault_worker.py) stops the run
with exit 4 and saves nothing after the last good state (train.on_nonfinite stop), or skips
the step and counts it (skip), up to nonfinite_max_skips in a row; with 2 processes a NaN on
rank 1 alone stops both ranks at the same step."""
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from pggan.training.checkpoint import (CheckpointIndex, NonFiniteStateError, nonfinite_tensors,
                                       save_training_state)
from trainkit import cli_env, index_entries, train_cmd, write_tiny_config

WORKER = Path(__file__).resolve().parent / "fault_worker.py"
NAN_NIMG = 136          # an 8x8 stabilisation step, after the interval state at cur_nimg 104


def run_fault(tmp_path, *args, nproc=1, env=None, timeout=300):
    config = write_tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    e = cli_env()
    e.update(env or {})
    proc = subprocess.run(train_cmd(["--config", config, "--run-dir", run_dir, *args], nproc,
                                    WORKER), env=e, capture_output=True, text=True,
                          timeout=timeout)
    return proc, run_dir


def assert_states_finite(run_dir):
    index = CheckpointIndex.load(run_dir / "checkpoints")
    assert not index.unreadable
    for e in index.entries:
        data = torch.load(run_dir / "checkpoints" / e.file, map_location="cpu",
                          weights_only=True)
        assert not nonfinite_tensors({k: data[k] for k in ("G", "D", "G_ema", "G_opt",
                                                           "D_opt")}), e.file
    return index


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("pggan-train: error: ")]


def test_stop_saves_nothing_new_and_names_term_resolution_and_kimg(tmp_path):
    proc, run_dir = run_fault(tmp_path, env={"FAULT_NAN_NIMG": str(NAN_NIMG)})
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "non-finite D loss term Loss/D/" in line and "8x8, kimg 0.136" in line, line
    assert "training-state-000000000104.pt" in line
    index = assert_states_finite(run_dir)
    assert max(e.cur_nimg for e in index.entries) == 104
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))


def test_skip_counts_the_step_and_trains_on(tmp_path):
    proc, run_dir = run_fault(tmp_path, "--set", "train.on_nonfinite=skip",
                              env={"FAULT_NAN_NIMG": str(NAN_NIMG)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped a step: non-finite D loss term Loss/D/" in proc.stdout
    records = [json.loads(ln) for ln in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert records[-1]["Train/nonfinite_skips"] == 1
    index = assert_states_finite(run_dir)
    assert index.latest().cur_nimg == 400


def test_skip_stops_after_n_in_a_row(tmp_path):
    proc, run_dir = run_fault(tmp_path, "--set", "train.on_nonfinite=skip", "--set",
                              "train.nonfinite_max_skips=3",
                              env={"FAULT_NAN_NIMG": str(NAN_NIMG), "FAULT_NAN_FROM": "1"})
    assert proc.returncode == 4, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert "3 steps in a row" in line and "kimg 0.152" in line, line
    assert max(e.cur_nimg for e in assert_states_finite(run_dir).entries) == 104


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step(tmp_path):
    proc, run_dir = run_fault(tmp_path, nproc=2,
                              env={"FAULT_NAN_NIMG": str(NAN_NIMG), "FAULT_NAN_RANK": "1"})
    assert proc.returncode != 0
    assert "(exitcode: 4)" in proc.stderr, proc.stderr[-3000:]          # torchrun, a rank
    (line,) = error_lines(proc.stderr)
    assert "non-finite D loss term Loss/D/" in line and "kimg 0.136" in line, line
    assert max(e.cur_nimg for e in assert_states_finite(run_dir).entries) == 104


def test_a_nonfinite_state_is_never_written_or_pruned_for(tmp_path):
    good = {"kind": "interval", "boundary_res": None, "cur_nimg": 8, "step_index": 1, "res": 4,
            "model": {}, "config": {}, "G": {"w": torch.ones(3)}, "D": {}, "G_ema": {},
            "G_opt": {}, "D_opt": {}}
    save_training_state(tmp_path, good, keep_last=1)
    bad = dict(good, cur_nimg=16, G={"w": torch.tensor([1.0, math.nan])})
    with pytest.raises(NonFiniteStateError, match=r"G\.w"):
        save_training_state(tmp_path, bad, keep_last=1)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["index.json", "training-state-000000000008.pt"]
    assert [e["cur_nimg"] for e in index_entries(tmp_path)] == [8]
