"""Exact resume on shard data: a run stopped by SIGTERM or SIGUSR1 (what a scheduler sends before
preemption) at random moments, and started again with the same command each time, ends bitwise
equal to the uninterrupted run (G, D, G_ema, both Adam states): local shards and shards served
over http on localhost, 1 and 2 processes, 2 loader workers each. The stop points fall in every
stage of the tiny schedule (4x4, the 8x8 fade, 8x8, the 16x16 fade, 16x16), so a resume lands
before and after a fade boundary and a stage change; one chain of stops per case keeps the
number of process starts low (each resume must be exact for the end to be)."""
from __future__ import annotations

import functools
import http.server
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from trainkit import (REPO, assert_states_equal, cli_env, descendants, final_state,
                      index_entries, run_train, start_train, write_tiny_config)

pytestmark = pytest.mark.slow

# Stage starts of the tiny schedule (images): 8x8 fades in at 64, stabilises at 128, 16x16
# fades in at 192 and stabilises at 256; the run ends at 400.
FADE_8, STAB_8, FADE_16 = 64, 128, 192
TICK_KIMG = "0.016"         # a progress line every 2 steps: the test's clock for the stops
TICK = re.compile(r"^tick .* kimg (\d+\.\d+)/")


@pytest.fixture(scope="module")
def shard_data(tmp_path_factory):
    """256 synthetic images, 4 shards of 64 per resolution (4..16 px), and a tiny config."""
    base = tmp_path_factory.mktemp("shards")
    out = base / "ds"
    subprocess.run([sys.executable, "-m", "data_prep", "--source", "synthetic", "--out", out,
                    "--max-res", "16", "--num-images", "256", "--shard-images", "64", "--quiet",
                    "--workers", "1"], check=True, cwd=REPO, env=cli_env())
    return out, write_tiny_config(base)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_data(shard_data):
    """The same dataset served by an http server on localhost: the loader reads it as remote
    shards (front to back, in blocks), not memory-mapped."""
    ds, _ = shard_data
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(ds)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def args_for(config, data, run_dir) -> list:
    return ["--config", config, "--data", data, "--run-dir", run_dir, "--resume", "auto",
            "--num-workers", "2", "--tick-kimg", TICK_KIMG]


def send(proc, nproc: int, sig) -> None:
    """1 process: the process group (the trainer and its loader workers), as Ctrl-C or a
    scheduler does. 2 processes: every process below torchrun (ranks and loader workers), as
    SLURM signals a job step (slurm/node-launch.sh: the launcher itself ignores USR1)."""
    if nproc == 1:
        os.killpg(proc.pid, sig)
        return
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_at(args, nproc: int, log_path, min_nimg: int, sig, rng: random.Random) -> int:
    """Start the run, wait for a progress line at >= min_nimg, wait a random 0-60 ms, send
    `sig`; -> cur_nimg of the signal checkpoint it wrote."""
    run_dir = args[args.index("--run-dir") + 1]
    before = {e["file"] for e in index_entries(run_dir)}
    proc = start_train(args, nproc=nproc, log_path=log_path)
    try:
        deadline = time.time() + 240
        seen = False
        while not seen:
            assert time.time() < deadline, f"no progress line at {min_nimg} images in 240 s"
            assert proc.poll() is None, log_path.read_text()[-3000:]
            for line in log_path.read_text().splitlines():
                m = TICK.match(line)
                if m and round(float(m.group(1)) * 1000) >= min_nimg:
                    seen = True
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.06))
        send(proc, nproc, sig)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert f"stopped by signal {signal.Signals(sig).name}" in log, log[-3000:]
    if nproc == 1:
        assert code == 3, log[-3000:]
    new = [e for e in index_entries(run_dir) if e["file"] not in before]
    assert new and new[-1]["kind"] == "signal", (new, log[-2000:])
    return new[-1]["cur_nimg"]


def stop_and_resume(config, data, tmp_path, nproc: int, targets, seed: int) -> list:
    """A chain: stop at each target (alternately SIGTERM and SIGUSR1), resume, finally run to
    the end; -> the signal checkpoints' cur_nimg."""
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    args = args_for(config, data, run_dir)
    stops = []
    for i, target in enumerate(targets):
        sig = (signal.SIGTERM, signal.SIGUSR1)[i % 2]
        floor = max([target] + [s + 1 for s in stops])
        stops.append(stop_at(args, nproc, tmp_path / f"part{i}.log", floor, sig, rng))
    last = run_train(args, nproc=nproc)
    assert last.returncode == 0, last.stderr[-3000:]
    assert f"resuming at kimg {stops[-1] / 1000:g}" in last.stdout, last.stdout[-2000:]
    return stops


def reference(config, data, tmp_path, nproc: int):
    run_dir = tmp_path / "uninterrupted"
    proc = run_train(args_for(config, data, run_dir), nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_state(run_dir)


def test_local_shards_1_process_5_stops_sigterm_and_sigusr1(shard_data, tmp_path):
    ds, config = shard_data
    stops = stop_and_resume(config, ds, tmp_path, 1, [16, 80, 144, 208, 288], seed=1)
    assert len(set(stops)) == 5 and stops == sorted(stops), stops
    assert stops[0] < FADE_8 <= stops[1] < STAB_8 <= stops[2] < FADE_16 <= stops[3], stops
    assert_states_equal(reference(config, ds, tmp_path, 1), final_state(tmp_path / "run"))


def test_local_shards_2_processes_2_stops(shard_data, tmp_path):
    ds, config = shard_data
    stops = stop_and_resume(config, ds, tmp_path, 2, [88, 224], seed=2)
    assert FADE_8 <= stops[0] < STAB_8 and FADE_16 <= stops[1], stops
    uninterrupted = reference(config, ds, tmp_path, 2)
    assert uninterrupted["world_size"] == 2
    assert_states_equal(uninterrupted, final_state(tmp_path / "run"))


def test_http_shards_1_process_2_stops(shard_data, http_data, tmp_path):
    _, config = shard_data
    stops = stop_and_resume(config, http_data, tmp_path, 1, [96, 224], seed=3)
    assert FADE_8 <= stops[0] < STAB_8 and FADE_16 <= stops[1], stops
    assert_states_equal(reference(config, http_data, tmp_path, 1),
                        final_state(tmp_path / "run"))


def test_http_shards_2_processes_1_stop(shard_data, http_data, tmp_path):
    _, config = shard_data
    stops = stop_and_resume(config, http_data, tmp_path, 2, [176], seed=4)
    assert STAB_8 <= stops[0], stops
    assert_states_equal(reference(config, http_data, tmp_path, 2),
                        final_state(tmp_path / "run"))
