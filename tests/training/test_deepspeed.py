"""The DeepSpeed engine (`--engine deepspeed --zero-stage {1,2}`), 2 CPU processes under torchrun
(gloo), on the tiny configuration of trainkit (4x4 -> 8x8 fade-in -> 16x16 fade-in, 50 steps):

* both ranks end with identical G, D and G_ema, while each holds only its own slice of every
  Adam moment (ZeRO really shards);
* the losses equal those of the DDP engine with the same global batch, and the Adam states
  hold the same parameters with the same step counts, also where torch Adam skips parameters
  that got no gradient (lazy R1, no reset on growing, beta1 > 0);
* a run killed after a checkpoint (SIGKILL, ZeRO-1) or stopped by SIGTERM (ZeRO-2) and started
  again with the same command ends bit for bit where the uninterrupted run ends (G, D, G_ema,
  both sharded Adam states), resuming before the 16x16 fade-in;
* training states move between engines: DeepSpeed -> DDP (the shards put together, bit for
  bit) and DDP -> DeepSpeed.

The first DeepSpeed start on a machine compiles a small communication op with g++ into
TORCH_EXTENSIONS_DIR (torch's default: ~/.cache/torch_extensions), once; later starts load it.
"""
import json
import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from pggan.config import Config, ConfigError, config_from_dict
from pggan.train import main
from pggan.training.checkpoint import CheckpointError, optimizer_state_by_name
from pggan.training.deepspeed_engine import (default_config_path, engine_config,
                                             read_deepspeed_config)
from pggan.training.engine import Engine
from pggan.training.loop import Trainer
from pggan.training.optimizer_shards import full_optimizer_state
from trainkit import (REPO, TINY_TOTAL_NIMG, TINY_YAML, descendants, index_entries, kill_run,
                      run_train, start_train, tensor_diffs, wait_for_checkpoint)

DS_WORKER = Path(__file__).resolve().parent / "dist_worker.py"
LOSS_KEYS = ("Loss/D/adv", "Loss/G/adv", "Loss/D/gp", "Loss/D/drift", "Scores/real",
             "Scores/fake")
FADE16_NIMG = 192           # the 16x16 fade-in starts here in the tiny configuration


def ds_args(stage):
    return ["--engine", "deepspeed", "--zero-stage", stage]


def ticks(run_dir):
    with open(Path(run_dir) / "stats.jsonl") as f:
        return [json.loads(line) for line in f]


def state_at(run_dir, cur_nimg=TINY_TOTAL_NIMG):
    """(training state, its path) at cur_nimg."""
    path = Path(run_dir) / "checkpoints" / f"training-state-{cur_nimg:012d}.pt"
    return torch.load(path, map_location="cpu", weights_only=True), path


def full_state(run_dir, cur_nimg=TINY_TOTAL_NIMG):
    """A training state with G_opt / D_opt as whole by-name Adam states (shards assembled)."""
    data, path = state_at(run_dir, cur_nimg)
    for net in ("G", "D"):
        data[f"{net}_opt"] = full_optimizer_state(data, net, path)
    return data


def assert_bitwise_equal(a, b):
    for key in ("G", "D", "G_ema", "G_opt", "D_opt"):
        diffs = tensor_diffs(a[key], b[key], key)
        assert not diffs, f"{key} differs: {diffs[:5]}"
    assert (a["cur_nimg"], a["step_index"]) == (b["cur_nimg"], b["step_index"])


def assert_losses_match(run_a, run_b, up_to_nimg=224):
    """Tick statistics equal within float rounding, up to `up_to_nimg` (see
    test_distributed.py: past that, Adam can amplify a rounding difference)."""
    a, b = ticks(run_a), ticks(run_b)
    assert [t["cur_nimg"] for t in a] == [t["cur_nimg"] for t in b]
    compared = 0
    for ta, tb in zip(a, b):
        if "Loss/D/adv" not in ta or ta["cur_nimg"] > up_to_nimg:
            continue
        compared += 1
        for k in LOSS_KEYS:
            if k in ta:
                assert math.isclose(ta[k], tb[k], rel_tol=1e-4, abs_tol=1e-7), \
                    (ta["cur_nimg"], k, ta[k], tb[k])
    assert compared >= 4


def adam_steps(opt_state):
    """{parameter name: Adam step count} of a by-name optimizer state."""
    return {name: int(s["step"]) for name, s in opt_state["state"].items()}


@dataclass
class DSRun:
    stage: int
    run_dir: Path
    ranks_dir: Path


@pytest.fixture(scope="module")
def ds_runs(tiny_run, tmp_path_factory):
    """stage -> the tiny run with 2 processes and the DeepSpeed engine, same global batch
    (2 x 4) as the DDP runs; each stage run once, on first use."""
    done = {}

    def get(stage: int) -> DSRun:
        if stage not in done:
            base = tmp_path_factory.mktemp(f"ds{stage}")
            run_dir, ranks_dir = base / "run", base / "ranks"
            ranks_dir.mkdir()
            proc = run_train([ranks_dir, "--config", tiny_run.config, "--run-dir", run_dir,
                              "--resume", "auto", *ds_args(stage)], nproc=2, script=DS_WORKER)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[stage] = DSRun(stage, run_dir, ranks_dir)
        return done[stage]
    return get


STAGES = pytest.mark.parametrize("stage", [1, 2], ids=["zero1", "zero2"])


# --------------------------------------------------------------------------------------------
# 2 processes: identical parameters, sharded Adam, the DDP engine's numbers.


@STAGES
def test_ranks_hold_identical_parameters_and_disjoint_adam_slices(ds_runs, stage):
    ds_run = ds_runs(stage)
    rank0 = torch.load(ds_run.ranks_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(ds_run.ranks_dir / "rank1.pt", weights_only=True)
    assert rank0["cur_nimg"] == rank1["cur_nimg"] == TINY_TOTAL_NIMG
    assert rank0["world_size"] == 2
    for key in ("G", "D", "G_ema"):
        diffs = tensor_diffs(rank0[key], rank1[key], key)
        assert not diffs, diffs[:5]
    # ZeRO: rank r holds [r * part, (r + 1) * part) of every flattened moment, nothing else.
    for net in ("G", "D"):
        s0, s1 = rank0[f"{net}_shard"]["state"], rank1[f"{net}_shard"]["state"]
        assert set(s0) == set(s1) and len(s0) > 0
        for name in s0:
            a, b, numel = s0[name], s1[name], s0[name]["numel"]
            assert a["start"] == 0 and a["stop"] == b["start"] and b["stop"] == numel
            for key in a["sliced"]:
                assert a["tensors"][key].numel() == a["stop"] - a["start"]
                assert b["tensors"][key].numel() == b["stop"] - b["start"]
            if numel > 4:       # every slice is a real part of the parameter
                assert 0 < a["stop"] < numel
    # The final training state names its shards; pruning removed the shards of pruned states.
    entries = index_entries(ds_run.run_dir)
    ckpt = ds_run.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("*.optim")) == sorted(e["shards"] for e in entries)
    assert not list(ckpt.glob(".*.tmp"))
    for e in entries:
        assert sorted(p.name for p in (ckpt / e["shards"]).iterdir()) == \
            ["rank-00000-of-00002.pt", "rank-00001-of-00002.pt"]


@STAGES
def test_matches_the_ddp_engine_with_the_same_global_batch(ds_runs, stage, two_proc_run):
    ds_run = ds_runs(stage)
    assert_losses_match(two_proc_run.run_dir, ds_run.run_dir)
    ddp, ds = full_state(two_proc_run.run_dir), full_state(ds_run.run_dir)
    assert ds["world_size"] == ddp["world_size"] == 2
    for net in ("G", "D"):
        assert adam_steps(ds[f"{net}_opt"]) == adam_steps(ddp[f"{net}_opt"])
        for name, s in ds[f"{net}_opt"]["state"].items():
            assert s["exp_avg"].shape == ddp[f"{net}_opt"]["state"][name]["exp_avg"].shape


def test_adam_skips_parameters_without_gradient_as_torch_does(tiny_run, tmp_path):
    """Lazy R1 every 2nd step (D's output bias gets no gradient there), no Adam reset on
    growing (blocks join with fresh moments mid-run), beta1 0.5: ZeRO would otherwise feed
    zeros to Adam for such parameters (moments decay, step counts advance)."""
    variant = ["--config", tiny_run.config, "--resume", "auto", "--total-kimg", "0.24",
               "--set", "loss.kind=logistic-r1", "--set", "loss.r1_interval=2",
               "--set", "optim.reset_on_grow=false", "--set", "optim.beta1=0.5"]
    ddp = run_train(variant + ["--run-dir", tmp_path / "ddp"], nproc=2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ds = run_train(variant + ["--run-dir", tmp_path / "ds", *ds_args(2)], nproc=2)
    assert ds.returncode == 0, ds.stderr[-3000:]
    assert_losses_match(tmp_path / "ddp", tmp_path / "ds")
    a, b = full_state(tmp_path / "ddp", 240), full_state(tmp_path / "ds", 240)
    for net in ("G", "D"):
        steps = adam_steps(a[f"{net}_opt"])
        assert adam_steps(b[f"{net}_opt"]) == steps
        assert len(set(steps.values())) > 1         # the case is really exercised


# --------------------------------------------------------------------------------------------
# Exact resume.


def resumed_from(stdout: str) -> int:
    m = re.search(r"resuming from .*training-state-(\d+)\.pt", stdout)
    assert m, f"the second run did not resume:\n{stdout[-2000:]}"
    return int(m.group(1))


@pytest.mark.parametrize("stage, stop_signal", [(1, signal.SIGKILL), (2, signal.SIGTERM)],
                         ids=["zero1-sigkill", "zero2-sigterm"])
def test_stopped_run_resumes_bitwise_exactly(ds_runs, stage, tiny_run, tmp_path, stop_signal):
    ds_run = ds_runs(stage)
    run_dir = tmp_path / "run"
    args = ["--config", tiny_run.config, "--run-dir", run_dir, "--resume", "auto",
            *ds_args(ds_run.stage)]
    proc = start_train(args, nproc=2, log_path=tmp_path / "first.log")
    kinds = ("interval",) if stop_signal == signal.SIGKILL else ("boundary",)
    wait_for_checkpoint(proc, run_dir, kinds=kinds)
    if stop_signal == signal.SIGKILL:
        kill_run(proc, signal.SIGKILL)          # the launcher and both workers at once
    else:
        # As a job scheduler does: every training process gets the signal. They agree to stop,
        # rank 0 saves, both exit 3 (torchrun then reports the failed workers with exit 1).
        for pid in descendants(proc.pid):
            os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=120)
    if stop_signal == signal.SIGTERM:
        log = (tmp_path / "first.log").read_text()
        assert "stopped by signal SIGTERM" in log, log[-3000:]
        assert "exitcode  : 3" in log or "exitcode: 3" in log, log[-3000:]
        assert [e["kind"] for e in index_entries(run_dir)].count("signal") == 1
    assert not (run_dir / "checkpoints" / f"training-state-{TINY_TOTAL_NIMG:012d}.pt").exists()

    second = run_train(args, nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert resumed_from(second.stdout) < FADE16_NIMG        # continues through a fade-in
    assert_bitwise_equal(full_state(ds_run.run_dir), full_state(run_dir))


# --------------------------------------------------------------------------------------------
# Between engines.


def test_deepspeed_state_loads_whole_into_the_ddp_engine(ds_runs, one_thread):
    ds_run = ds_runs(1)
    """A sharded state of 2 processes, read by a 1-process DDP trainer: its Adam states are
    the shards put together, bit for bit."""
    data, path = state_at(ds_run.run_dir, 304)
    cfg = config_from_dict(yaml.safe_load(TINY_YAML), Config())
    trainer = Trainer(cfg, Engine(), ds_run.run_dir, resume_state=data, resume_path=path,
                      print_fn=lambda *a, **k: None)
    assert trainer.cur_nimg == 304
    for net in ("G", "D"):
        loaded = optimizer_state_by_name(trainer.opt[net], trainer.nets[net])
        diffs = tensor_diffs(full_optimizer_state(data, net, path), loaded, net)
        assert not diffs, diffs[:5]
        assert len(loaded["state"]) > 0


def test_ddp_state_resumes_under_deepspeed(tiny_run, tmp_path, capsys, one_thread):
    """The 1-process DDP run's state at kimg 0.304, one more step under DDP (in this process)
    and under DeepSpeed ZeRO-1 (1 process): the same Adam step counts (the moments were
    loaded, not restarted) and the same weights up to float rounding."""
    ddp_state = tiny_run.run_dir / "checkpoints" / "training-state-000000000304.pt"
    common = ["--config", tiny_run.config, "--resume", ddp_state, "--total-kimg", "0.312"]
    assert main([str(a) for a in common + ["--run-dir", tmp_path / "ddp"]]) == 0
    capsys.readouterr()
    proc = run_train(common + ["--run-dir", tmp_path / "ds", *ds_args(1)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = full_state(tmp_path / "ddp", 312), full_state(tmp_path / "ds", 312)
    for net in ("G", "D"):
        assert adam_steps(b[f"{net}_opt"]) == adam_steps(a[f"{net}_opt"])
        assert min(adam_steps(a[f"{net}_opt"]).values()) > 1
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=1e-6, atol=1e-8,
                                       msg=f"{key}.{name}")


# --------------------------------------------------------------------------------------------
# Configuration and damaged checkpoints: one-line errors, before any process group starts.


def test_launch_files_are_valid_for_their_stage():
    for stage in (1, 2):
        file_cfg = read_deepspeed_config(default_config_path(stage), stage)
        cfg = engine_config(file_cfg, stage, images_per_step=32)
        assert cfg["zero_optimization"]["stage"] == stage
        assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) \
            == (32, 1)
        assert "bf16" not in cfg and cfg["zero_optimization"]["compute_grad_norm"] is False


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"optimizer": {"type": "Adam"}}', 'remove "optimizer"'),
    ('{"zero_optimization": {"stage": 2}}', "--zero-stage 1"),
    ('{"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}', "offload_optimizer"),
    ('{"fp16": {"enabled": true}}', 'remove "fp16"'),
])
def test_bad_deepspeed_config_is_one_line(tmp_path, content, fragment):
    path = tmp_path / "ds.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        read_deepspeed_config(path, 1)
    msg = str(e.value)
    assert fragment in msg and str(path) in msg and "\n" not in msg


def test_cli_refuses_unusable_engine_options(tiny_run, tmp_path, capsys):
    base = ["--config", str(tiny_run.config), "--run-dir", str(tmp_path / "r")]
    cases = [(["--engine", "deepspeed", "--zero-stage", "0"], "ZeRO stage 1 or 2"),
             (["--deepspeed-config", str(REPO / "launch" / "deepspeed-zero1.json")],
              "--deepspeed-config needs --engine deepspeed"),
             (["--engine", "deepspeed", "--deepspeed-config", str(tmp_path / "none.json")],
              "no such file")]
    for extra, fragment in cases:
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "r").exists()


def test_missing_shard_is_a_clear_error(ds_runs, tmp_path):
    ds_run = ds_runs(1)
    data, path = state_at(ds_run.run_dir)
    broken = tmp_path / "checkpoints"
    broken.mkdir()
    (broken / path.name).write_bytes(path.read_bytes())
    shards = broken / data["optimizer_shards"]
    shards.mkdir()
    src = path.parent / data["optimizer_shards"] / "rank-00000-of-00002.pt"
    (shards / src.name).write_bytes(src.read_bytes())
    with pytest.raises(CheckpointError, match="rank-00001-of-00002.pt is missing"):
        full_optimizer_state(data, "G", broken / path.name)
