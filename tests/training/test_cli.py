"""pggan-train end to end: what a real run (subprocess) writes, --resume-res, growing a
finished run to a larger max-res, `accelerate launch`, and the one-line errors for unusable
options and checkpoints (those through `pggan.train.main` in this process: no training starts,
and a subprocess would only add interpreter start-up)."""
import shutil
import subprocess
import sys

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pggan.config import Config, config_from_dict
from pggan.nets import build_generator
from pggan.snapshot import load_snapshot
from pggan.train import main
from trainkit import (REPO, TINY_YAML, assert_states_equal, cli_env, final_state, listing,
                      index_entries)

SCALAR_TAGS = ("Loss/D/adv", "Loss/G/adv", "Loss/D/gp", "Loss/D/drift", "Scores/real",
               "Scores/fake", "Progress/alpha", "Progress/res", "Progress/kimg",
               "Progress/lr", "Timing/img_per_sec", "Timing/sec_per_kimg",
               "Resources/peak_host_mem_gb")



@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, one_thread):
    """pggan.train.main(argv) in this process -> Result(exit code, stdout, stderr)."""
    def run(args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pggan-train: error: "), proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


def test_run_writes_state_snapshot_tensorboard_and_grids(tiny_run):
    run = tiny_run.run_dir
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["max_res"] == 16 and cfg["train"]["total_kimg"] == 0.4

    entries = index_entries(run)
    assert [e["boundary_res"] for e in entries if e["kind"] == "boundary"] == [8, 16]
    assert entries[-1]["kind"] == "final" and entries[-1]["cur_nimg"] == 400
    assert len([e for e in entries if e["boundary_res"] is None]) <= 2      # keep_last 2
    files = sorted(p.name for p in (run / "checkpoints").glob("training-state-*.pt"))
    assert files == sorted(e["file"] for e in entries)

    state = final_state(run)
    assert state["format"] == "pggan-training-state" and state["res"] == 16
    G_ema, snap = load_snapshot(run / "network-snapshot-000000.pt")
    assert (snap["res"], snap["cur_nimg"]) == (16, 400)
    for name, t in G_ema.state_dict().items():
        assert torch.equal(t, state["G_ema"][name]), name
    with torch.no_grad():
        img = G_ema(torch.randn(2, 16), res=16)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    missing = [t for t in SCALAR_TAGS if t not in tags["scalars"]]
    assert not missing, missing
    assert "Resources/peak_gpu_mem_gb" not in tags["scalars"]          # CPU run
    alphas = [e.value for e in acc.Scalars("Progress/alpha")]
    assert any(0 < a < 1 for a in alphas) and alphas[-1] == 1.0           # a fade was logged
    assert sorted({e.value for e in acc.Scalars("Progress/res")}) == [4, 8, 16]
    images = acc.Images("Images/fakes")
    assert len(images) == len(alphas)                                     # one grid per tick

    grid = np.asarray(Image.open(run / "fakes-latest.png"))
    assert grid.shape == (32, 32, 3)                  # 4 fixed latents at 16 px, 2 x 2
    assert grid.std() > 0
    assert (run / "fakes-000000.png").is_file()
    lines = (run / "stats.jsonl").read_text().splitlines()
    assert len(lines) == len(alphas)
    progress = [ln for ln in tiny_run.stdout.splitlines() if ln.startswith("tick ")]
    assert len(progress) == len(lines)
    assert "16x16" in progress[-1] and "img/s" in progress[-1] and "ETA stage" in progress[-1]


def test_dry_run_prints_config_and_writes_nothing(cli, tiny_run, tmp_path):
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "r", "--dry-run",
                      "--max-res", "32"])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["model"]["max_res"] == 32
    assert not (tmp_path / "r").exists()


def test_bad_option_is_one_line(cli, tiny_run, tmp_path):
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "r",
                      "--max-res", "1000"])
    assert_one_line_error(proc, "max-res must be a power of two")
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "r",
                      "--set", "loss.kind=wgan"])
    assert_one_line_error(proc, "loss.kind must be one of")
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "r",
                      "--resume-res", "8"])
    assert_one_line_error(proc, "--resume-res needs --resume")
    assert not (tmp_path / "r").exists()


def test_fresh_start_into_a_used_run_dir_is_refused(cli, tiny_run):
    before = listing(tiny_run.run_dir)
    proc = cli(["--config", tiny_run.config, "--run-dir", tiny_run.run_dir])
    assert_one_line_error(proc, "already holds training states", "--resume auto")
    assert listing(tiny_run.run_dir) == before


def test_resume_auto_of_a_finished_run_does_nothing(cli, tiny_run):
    before = listing(tiny_run.run_dir)
    proc = cli(["--config", tiny_run.config, "--run-dir", tiny_run.run_dir,
                      "--resume", "auto"])
    assert proc.returncode == 0, proc.stderr
    assert "training is complete" in proc.stdout
    after = listing(tiny_run.run_dir)
    assert {k: v for k, v in after.items() if k != "config.yaml"} == \
        {k: v for k, v in before.items() if k != "config.yaml"}


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir / "checkpoints", run / "checkpoints")
    latest = run / "checkpoints" / index_entries(run)[-1]["file"]
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])                 # truncated
    before = listing(run)
    proc = cli(["--config", tiny_run.config, "--run-dir", run, "--resume", "auto"])
    assert_one_line_error(proc, latest.name, "damaged")
    assert listing(run) == before

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "new",
                      "--resume", garbage])
    assert_one_line_error(proc, "garbage.pt", "not a readable training state")
    assert not (tmp_path / "new").exists()

    # A damaged file that the index does not list is not skipped silently either.
    (run / "checkpoints" / "index.json").unlink()
    proc = cli(["--config", tiny_run.config, "--run-dir", run, "--resume", "auto"])
    assert_one_line_error(proc, latest.name, "not a readable training state")

    snapshot = tiny_run.run_dir / "network-snapshot-000000.pt"
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "new",
                      "--resume", snapshot])
    assert_one_line_error(proc, "network snapshot")


def test_other_architecture_is_a_clear_error(cli, tiny_run, tmp_path):
    state = tiny_run.run_dir / "checkpoints" / "training-state-000000000400.pt"
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "new",
                      "--resume", state, "--set", "model.fmap_base=128"])
    assert_one_line_error(proc, "model.fmap_base 64 (checkpoint) vs 128 (now)")
    assert not (tmp_path / "new").exists()
    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "new",
                      "--resume", state, "--max-res", "8"])
    assert_one_line_error(proc, "max-res 16", "--max-res 8")


def test_resume_res_restarts_the_stage_exactly(cli, tiny_run, tmp_path):
    boundary = next(e for e in index_entries(tiny_run.run_dir) if e["boundary_res"] == 16)
    run = tmp_path / "from-16"
    proc = cli(["--config", tiny_run.config, "--run-dir", run,
                      "--resume", tiny_run.run_dir, "--resume-res", "16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {tiny_run.run_dir / 'checkpoints' / boundary['file']}" in proc.stdout
    assert f"resuming at kimg {boundary['cur_nimg'] / 1000:g}" in proc.stdout
    # The 16x16 stage ran again from its start with the weights saved there: same end.
    assert_states_equal(final_state(tiny_run.run_dir), final_state(run))

    proc = cli(["--config", tiny_run.config, "--run-dir", tmp_path / "x",
                      "--resume", tiny_run.run_dir, "--resume-res", "32"])
    assert_one_line_error(proc, "--resume-res 32", "stages with one: 8, 16")
    # Restarting a stage inside the run's own directory would overwrite its later states.
    before = listing(tiny_run.run_dir)
    proc = cli(["--config", tiny_run.config, "--run-dir", tiny_run.run_dir,
                      "--resume", "auto", "--resume-res", "8"])
    assert_one_line_error(proc, "new --run-dir")
    assert listing(tiny_run.run_dir) == before


def test_a_finished_16px_run_keeps_growing_to_32(cli, tiny_run, tmp_path):
    run = tmp_path / "to-32"
    # With max-res 32 the 16x16 stage ends at kimg 0.406 (stabilise 0.15): the resumed run
    # finishes it, grows (fade-in of 32x32) and trains at 32 until kimg 0.5.
    proc = cli(["--config", tiny_run.config, "--run-dir", run,
                      "--resume", tiny_run.run_dir, "--max-res", "32", "--total-kimg", "0.5",
                      "--set", "schedule.stab_kimg_by_res={16: 0.15}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming at kimg 0.4" in proc.stdout
    entries = index_entries(run)
    assert [e["boundary_res"] for e in entries if e["boundary_res"]] == [32]
    end = final_state(run, entries[-1]["cur_nimg"])
    assert end["model"]["max_res"] == 32 and end["res"] == 32 and end["cur_nimg"] >= 500
    start = final_state(tiny_run.run_dir)
    assert "blocks.32.conv0.weight" in end["G"] and "blocks.32.conv0.weight" not in start["G"]
    cfg32 = config_from_dict(yaml.safe_load(TINY_YAML), Config())
    cfg32.model.max_res = 32
    torch.manual_seed(cfg32.train.seed)                # how the run initialised its networks
    init = build_generator(cfg32.model).state_dict()
    for key in ("blocks.32.conv0.weight", "blocks.32.conv1.bias", "torgb.32.weight"):
        assert not torch.equal(end["G"][key], init[key]), f"{key} never trained"
    G_ema, snap = load_snapshot(run / "network-snapshot-000000.pt")
    assert snap["res"] == 32
    assert G_ema(torch.randn(1, 16), res=32).shape == (1, 3, 32, 32)


def test_accelerate_launch_runs_the_script(tiny_run, tmp_path):
    run = tmp_path / "acc"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "pggan" / "train.py"), "--config", str(tiny_run.config),
           "--run-dir", str(run), "--total-kimg", "0.016"]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert final_state(run, 16)["step_index"] == 2
