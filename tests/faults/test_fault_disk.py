"""Disk full: a run directory on a tmpfs of a few MB fills up mid-run. The run stops with exit 5
and one line naming the file; no temp file is left; every training state in the index loads.
Needs root (mount); skipped with the reason elsewhere."""
import os
import shutil
import subprocess

import pytest

from pggan.training.checkpoint import CheckpointIndex, read_training_state
from trainkit import run_train, write_tiny_config


def mount_tmpfs(path, size):
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to make a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def disk_full_trial(tmp_path, size="600k"):
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, size)
    try:
        config = write_tiny_config(tmp_path)
        run_dir = mnt / "run"
        proc = run_train(["--config", config, "--run-dir", run_dir, "--set",
                          "train.keep_last=20", "--set", "train.total_kimg=4"])
        temp = [p for p in run_dir.rglob(".*tmp*")]
        index = CheckpointIndex.load(run_dir / "checkpoints")
        states = [read_training_state(run_dir / "checkpoints" / e.file) for e in index.entries]
        return proc, temp, index, states
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_cleanly(tmp_path):
    proc, temp, index, states = disk_full_trial(tmp_path)
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("pggan-train: error:")]
    assert "No space left on device" in line and "cannot write" in line, line
    assert not temp, temp
    assert not index.unreadable and states
