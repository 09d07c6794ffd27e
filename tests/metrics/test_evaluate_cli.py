"""pggan-evaluate: a real run on a snapshot (JSON out), 2 processes (torchrun, gloo) giving the
numbers of 1 process, and one-line errors with exit code 2 for bad input."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pggan.evaluate import main
from pggan.snapshot import save_snapshot

from .helpers import tiny_generator, write_pooled_features


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    G, cfg = tiny_generator(max_res=32)
    path = d / "network-snapshot-000010.pt"
    save_snapshot(path, G, cfg, res=16, alpha=1.0, cur_nimg=10_000)
    (d / "junk.pt").write_bytes(b"not a torch file")
    return path, write_pooled_features(d / "features.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, tmp_path, nproc=1):
    # The subprocesses import pggan from this checkout whatever the working directory.
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in paths if p))
    if nproc == 1:
        cmd = [sys.executable, "-m", "pggan.evaluate"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "pggan.evaluate"]
    return subprocess.run(cmd + args, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_one_and_two_processes_agree(snapshot, tmp_path):
    snap, weights = snapshot
    common = ["--snapshot", str(snap), "--metrics", "swd,msssim,fid,kid", "--num-images", "20",
              "--fid-weights", weights, "--no-cache", "--device", "cpu"]
    one = _run(common + ["--out", "one.json", "--batch-size", "8"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = _run(common + ["--out", "two.json", "--batch-size", "4"], tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert (a["res"], a["alpha"], a["data"], a["world_size"]) == (16, 1.0, "synthetic", 1)
    assert b["world_size"] == 2
    assert list(a["metrics"]) == ["swd", "msssim", "fid", "kid"]
    assert list(a["metrics"]["swd"]["per_level"]) == ["16"]
    # Same global image sets, same neighbourhoods and directions: the same SWD and MS-SSIM up to
    # G's own float noise. CPU convolutions are not batch-size invariant (the same latent
    # generated in a batch of 1 and of 8 differs by ~1e-5 here), and the two runs batch
    # differently (8, 8, 4 vs 4, 4, 2 per rank), so a pixel can round to the next uint8 level.
    # Measured: 1.3e-6 (SWD), 6.8e-5 (MS-SSIM), 5e-7 (FID) relative; the bounds are ~10x that
    # (KID, a small difference of kernel means, gets 1e-4).
    for name, rel in (("swd", 1e-5), ("msssim", 1e-3), ("fid", 1e-5), ("kid", 1e-4)):
        assert b["metrics"][name]["value"] == pytest.approx(a["metrics"][name]["value"],
                                                            rel=rel), name
    assert a["metrics"]["fid"]["value"] > 0
    # The summary printed by rank 0 only.
    assert two.stdout.count("swd ") == 1 and one.stdout.splitlines()[0].startswith("swd ")


@pytest.mark.parametrize("args, message", [
    (["--snapshot", "{tmp}/missing.pt"], "missing.pt: snapshot not found"),
    (["--snapshot", "{snap}", "--metrics", "swd,foo"], "--metrics: unknown metric 'foo'"),
    (["--snapshot", "{snap}", "--data", "{tmp}/nodata"], "--data {tmp}/nodata: no such directory"),
    (["--snapshot", "{snap}", "--res", "64"], "--res 64: must be a power of two in 4..32"),
    (["--snapshot", "{snap}", "--alpha", "2"], "--alpha must be in [0, 1]"),
    (["--snapshot", "{snap}", "--num-images", "1"], "--num-images must be >= 2"),
    (["--snapshot", "{snap}", "--out", "{tmp}/no/dir/m.json"], "--out {tmp}/no/dir/m.json: "
                                                              "directory"),
    (["--snapshot", "{snap}", "--metrics", "fid", "--fid-weights", "{tmp}/w.pt"],
     "metrics.fid_weights {tmp}/w.pt: file not found"),
    (["--snapshot", "{junk}"], "junk.pt: not a readable snapshot"),
])
def test_bad_input_is_one_line_and_exit_2(snapshot, tmp_path, capsys, args, message):
    snap, _ = snapshot
    fill = dict(tmp=tmp_path, snap=snap, junk=snap.parent / "junk.pt")
    rc = main([a.format(**fill) for a in args] + ["--no-cache", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("pggan-evaluate: ")
    assert message.format(**fill) in err


def test_synthetic_reference_seed_comes_from_the_snapshot(tmp_path):
    G, cfg = tiny_generator(max_res=16)
    snap = tmp_path / "network-snapshot-000001.pt"
    save_snapshot(snap, G, cfg, res=16, alpha=1.0, cur_nimg=1000, extra={"seed": 9})
    common = ["--snapshot", str(snap), "--metrics", "swd", "--num-images", "8", "--no-cache",
              "--device", "cpu"]

    def swd(*extra):
        out = tmp_path / "m.json"
        assert main(common + ["--out", str(out), *extra]) == 0
        result = json.loads(out.read_text())
        return result["data_seed"], result["metrics"]["swd"]["value"]

    from_snapshot, explicit, other = swd(), swd("--data-seed", "9"), swd("--data-seed", "0")
    assert from_snapshot == explicit and from_snapshot[0] == 9
    assert other[0] == 0 and other[1] != explicit[1]
