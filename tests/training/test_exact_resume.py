"""Exact resume: a run killed after a checkpoint and started again with the same command ends
bit-for-bit where the uninterrupted run ends (G, D, G_ema, both Adam states), across a fade-in
and a new resolution; with 1 and with 2 processes; after SIGKILL and after SIGTERM (exit 3)."""
import re
import signal


from trainkit import (TINY_TOTAL_NIMG, assert_states_equal, final_state, index_entries,
                      kill_run, run_train, start_train, wait_for_checkpoint)


def resumed_from(stdout: str) -> int:
    m = re.search(r"resuming from .*training-state-(\d+)\.pt", stdout)
    assert m, f"the second run did not resume:\n{stdout[-2000:]}"
    return int(m.group(1))


def test_sigkill_then_same_command_is_bitwise_exact(tiny_run, tmp_path):
    run_dir = tmp_path / "run-B"
    args = ["--config", tiny_run.config, "--run-dir", run_dir, "--resume", "auto"]
    proc = start_train(args, log_path=tmp_path / "first.log")
    first = wait_for_checkpoint(proc, run_dir, kinds=("interval",))
    kill_run(proc, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it was killed"
    assert not (run_dir / "checkpoints" / f"training-state-{TINY_TOTAL_NIMG:012d}.pt").exists()

    second = run_train(args)
    assert second.returncode == 0, second.stderr[-3000:]
    start = resumed_from(second.stdout)
    assert first["cur_nimg"] <= start < 192     # resumed inside 8x8: 16x16 starts at 192
    assert_states_equal(final_state(tiny_run.run_dir), final_state(run_dir))


def test_sigterm_saves_exits_3_and_resumes_exactly(tiny_run, tmp_path):
    run_dir = tmp_path / "run-T"
    args = ["--config", tiny_run.config, "--run-dir", run_dir, "--resume", "auto"]
    proc = start_train(args, log_path=tmp_path / "first.log")
    wait_for_checkpoint(proc, run_dir, kinds=("boundary",))
    kill_run(proc, signal.SIGTERM)
    assert proc.wait(timeout=120) == 3, (tmp_path / "first.log").read_text()[-3000:]
    log = (tmp_path / "first.log").read_text()
    assert "stopped by signal SIGTERM" in log
    saved = [e for e in index_entries(run_dir) if e["kind"] == "signal"]
    assert len(saved) == 1 and saved[0]["cur_nimg"] < TINY_TOTAL_NIMG

    second = run_train(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert resumed_from(second.stdout) == saved[0]["cur_nimg"]
    assert_states_equal(final_state(tiny_run.run_dir), final_state(run_dir))


def test_two_processes_sigkill_then_same_command_is_bitwise_exact(tiny_run, two_proc_run,
                                                                   tmp_path):
    run_dir = tmp_path / "run-B2"
    args = ["--config", tiny_run.config, "--run-dir", run_dir, "--resume", "auto"]
    proc = start_train(args, nproc=2, log_path=tmp_path / "first.log")
    wait_for_checkpoint(proc, run_dir, kinds=("interval",))
    kill_run(proc, signal.SIGKILL)               # the launcher and both workers at once
    proc.wait(timeout=60)
    assert not (run_dir / "checkpoints" / f"training-state-{TINY_TOTAL_NIMG:012d}.pt").exists()

    second = run_train(args, nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert resumed_from(second.stdout) < 192
    uninterrupted = final_state(two_proc_run.run_dir)
    assert uninterrupted["world_size"] == 2
    assert_states_equal(uninterrupted, final_state(run_dir))
