"""Damaged data: shards truncated or replaced (size check on open), remote shards whose bytes do
not match dataset.json (hashed while streaming, nothing yielded from them), `data_prep
--verify`, and a run whose shards are all damaged stopping with exit 6 and a resumable state."""
import shutil
import subprocess
import sys
import warnings

import pytest

from pggan.data.tar_reader import ShardReadError, expand_shards
from pggan.data.dataset_info import load_dataset_info
from trainkit import REPO, cli_env, run_train, write_tiny_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "ds16"
    subprocess.run([sys.executable, "-m", "data_prep", "--source", "synthetic", "--out", out,
                    "--max-res", "16", "--num-images", "256", "--shard-images", "64", "--quiet",
                    "--workers", "1"], check=True, cwd=REPO, env=cli_env())
    return out


def copy_of(dataset, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(dataset, dst)
    return dst


def expected(info, res):
    return {u: (s.num_bytes, s.sha256) for u, s in zip(info.shard_urls(res), info.shards[res])}


def test_truncated_local_shard_is_refused_on_open(dataset, tmp_path):
    ds = copy_of(dataset, tmp_path)
    info = load_dataset_info(str(ds))
    url = info.shard_urls(8)[1]
    data = open(url, "rb").read()
    open(url, "wb").write(data[: len(data) // 2])
    errors = []
    samples = list(expand_shards([{"url": u} for u in info.shard_urls(8)],
                                 lambda e: errors.append(e) or True, expected(info, 8)))
    assert len(samples) == 256 - 64
    assert len(errors) == 1 and isinstance(errors[0], ShardReadError)
    assert "truncated or replaced" in errors[0].args[0] and errors[0].args[-1] == url


def test_remote_shard_with_other_bytes_yields_nothing(dataset, tmp_path):
    ds = copy_of(dataset, tmp_path)
    info = load_dataset_info(f"pipe:cat {ds}/{{}}")
    path = ds / info.shards[8][2].path
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF                       # same size, one byte changed inside an image
    path.write_bytes(bytes(data))
    errors = []
    urls = info.shard_urls(8)
    samples = list(expand_shards([{"url": u} for u in urls],
                                 lambda e: errors.append(e) or True, expected(info, 8)))
    assert len(samples) == 256 - 64
    assert {s["__url__"] for s in samples} == set(urls) - {urls[2]}
    assert len(errors) == 1 and "do not match dataset.json" in errors[0].args[0]


def test_verify_command_names_damaged_shards(dataset, tmp_path):
    ds = copy_of(dataset, tmp_path)
    ok = subprocess.run([sys.executable, "-m", "data_prep", "--verify", ds], cwd=REPO,
                        env=cli_env(), capture_output=True, text=True)
    assert ok.returncode == 0 and "0 damaged" in ok.stdout, ok.stdout + ok.stderr
    shard = sorted((ds / "res-0016").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[600] ^= 1
    shard.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "data_prep", "--verify", ds], cwd=REPO,
                         env=cli_env(), capture_output=True, text=True)
    assert bad.returncode == 1 and f"damaged shard {shard}: sha256" in bad.stdout, bad.stdout


def test_run_on_damaged_shards_stops_with_exit_6_and_a_resumable_state(dataset, tmp_path):
    ds = copy_of(dataset, tmp_path)
    for shard in (ds / "res-0008").glob("*.tar"):       # 8x8 starts at cur_nimg 64
        shard.write_bytes(shard.read_bytes()[:1000])
    config = write_tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    proc = run_train(["--config", config, "--data", ds, "--run-dir", run_dir])
    assert proc.returncode == 6, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("pggan-train: error:")]
    assert "res-0008/shard-" in line and "cannot read shard" in line, line
    assert "truncated or replaced" in line
    resumed = run_train(["--config", config, "--data", dataset, "--run-dir", run_dir,
                         "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout


def test_killed_loader_worker_stops_the_run_with_a_resumable_state(dataset, tmp_path):
    import os
    import signal
    import time

    from trainkit import descendants, index_entries, start_train
    config = write_tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    # No interval saves: the run stays in the last stage long enough to find its worker.
    args = ["--config", config, "--data", dataset, "--run-dir", run_dir, "--num-workers", "1",
            "--set", "train.snapshot_kimg=1000", "--set", "train.total_kimg=100"]
    log = tmp_path / "train.log"
    proc = start_train(args, log_path=log)
    try:
        # Wait for the last stage (16x16, to 100 kimg): an earlier stage's loader worker may be
        # being stopped at its stage's end, and killing it then is no fault.
        deadline = time.time() + 120
        while (not any(e["res"] == 16 for e in index_entries(run_dir))
               and time.time() < deadline):
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        workers = []
        while not workers and time.time() < deadline:     # the trainer's only children
            workers = descendants(proc.pid)
            time.sleep(0.05)
        assert workers, "no loader worker found"
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=120) == 6, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("pggan-train: error:")]
    assert "data loader worker 0 of 1 died (killed by SIGKILL)" in line, line
    assert "a training state was saved" in line, line
    kinds = [e["kind"] for e in index_entries(run_dir)]
    assert kinds[-1] == "signal", kinds
    resumed = run_train(args[:-2] + ["--set", "train.total_kimg=0.4", "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
