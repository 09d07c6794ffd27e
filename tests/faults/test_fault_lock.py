"""Run-directory lock: a second trainer on a held run dir refuses with one line naming the holder
and writes nothing; stale locks (holder gone on this host, pid reused, another host without a
heartbeat) are taken over with a message; a finished run leaves no lock."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pggan.training.run_lock import LOCK_NAME, RunLock, RunLockError
from trainkit import (index_entries, kill_run, listing, run_train, start_train,
                      write_tiny_config)




def write_lock(run_dir, host, pid, proc_start=None, age_s=0.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age_s,
                                "proc_start": proc_start, "token": "feedfacefeedface"}))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    try:
        with pytest.raises(RunLockError) as e:
            RunLock(tmp_path).acquire()
        msg = str(e.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in msg
        assert "\n" not in msg
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]   # nothing left
    finally:
        first.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, socket.gethostname(), pid)
    lock = RunLock(tmp_path)
    message = lock.acquire()
    assert message and f"pid {pid}" in message and "is gone" in message
    assert lock.owned()
    lock.release()


def test_reused_pid_is_stale(tmp_path):
    write_lock(tmp_path, socket.gethostname(), os.getpid(), proc_start="1")
    lock = RunLock(tmp_path)
    assert "now belongs to another process" in lock.acquire()
    lock.release()


def test_other_host_is_stale_only_after_the_heartbeat_timeout(tmp_path):
    write_lock(tmp_path, "some-other-node", 12345, age_s=5)
    with pytest.raises(RunLockError, match="host some-other-node, pid 12345"):
        RunLock(tmp_path, stale_s=60).acquire()
    write_lock(tmp_path, "some-other-node", 12345, age_s=120)
    lock = RunLock(tmp_path, stale_s=60)
    assert "no heartbeat for" in lock.acquire()
    lock.release()


def test_heartbeat_refreshes_the_mtime(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert os.stat(lock.path).st_mtime > old + 50
    lock.release()


def test_second_trainer_refuses_and_writes_nothing_then_takes_over_after_kill(tmp_path):
    config = write_tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    args = ["--config", config, "--run-dir", run_dir, "--resume", "auto",
            "--set", "train.total_kimg=100"]
    first = start_train(args, log_path=tmp_path / "first.log")
    try:
        deadline = time.time() + 120
        while not index_entries(run_dir) and time.time() < deadline:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.1)
        os.kill(first.pid, signal.SIGSTOP)          # alive but quiet: the listing holds still
        before = listing(run_dir)
        second = run_train(args, timeout=120)
        assert listing(run_dir) == before
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "in use by another " \
            "trainer" in lines[0], second.stderr
        os.kill(first.pid, signal.SIGCONT)
    finally:
        kill_run(first)                             # SIGKILL: the lock stays behind, stale
        first.wait()
    assert (run_dir / LOCK_NAME).exists()
    third = run_train(args[:-2] + ["--set", "train.total_kimg=0.4"], timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the lock of {run_dir} from a stopped trainer" in third.stdout
    assert f"pid {first.pid}, started" in third.stdout and "is gone" in third.stdout, \
        third.stdout.splitlines()[0]
    assert not (run_dir / LOCK_NAME).exists()


def test_refused_fresh_start_leaves_no_run_dir_or_lock(tmp_path):
    from pggan.train import main
    missing_data = tmp_path / "nodata"
    run_dir = tmp_path / "run"
    code = main(["--config", str(write_tiny_config(tmp_path)), "--run-dir", str(run_dir),
                 "--data", str(missing_data)])
    assert code == 2
    assert not run_dir.exists()


def test_filesystems_without_hard_links_fall_back_to_exclusive_create(tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    first = RunLock(tmp_path)
    assert first.acquire() is None and first.owned()
    with pytest.raises(RunLockError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
