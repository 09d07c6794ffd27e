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


def test_a_failed_stats_line_leaves_no_half_line(tmp_path, monkeypatch):
    import errno

    import pggan.stats as plog
    path = tmp_path / "stats.jsonl"
    path.write_text('{"a": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with open(path, "a") as f:
        monkeypatch.setattr(plog.os, "write", half_then_full)
        with pytest.raises(OSError) as e:
            plog.append_line(f, '{"b": 2}\n', path)
        monkeypatch.undo()
    assert e.value.filename == str(path) and e.value.errno == errno.ENOSPC
    assert path.read_text() == '{"a": 1}\n'


def test_temp_files_of_a_killed_writer_are_removed_under_the_lock(tmp_path):
    from pggan.training.checkpoint import remove_stale_temp_files
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / ".training-state-000000000104.tmp-999.pt",
             tmp_path / ".fakes-latest.tmp-999.png"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = tmp_path / "checkpoints" / "training-state-000000000104.pt"
    keep.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(p.name for p in stale)
    assert keep.exists() and not any(p.exists() for p in stale)
