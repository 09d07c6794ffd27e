"""benchmarks/gpu_suite.sh and its driver on a CPU, with the CUDA check faked: every step's real
command runs (with tiny CPU overrides), so a typo fails here and not on a rented GPU."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_suite",
                                                  ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


suite = _load()


def _env():
    # One thread (shared cores); TRITON_INTERPRET set here must not reach the GPU steps.
    return dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")


def test_results_dir_is_required():
    proc = subprocess.run(["bash", str(SUITE)], capture_output=True, text=True, env=_env())
    assert proc.returncode == 2 and "usage: bash benchmarks/gpu_suite.sh RESULTS_DIR" in \
        proc.stderr


def test_refuses_without_cuda(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run(["bash", str(SUITE), "res"], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path)
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout
    assert not (tmp_path / "res").exists()


def test_budget_is_spread_over_steps_and_within_8_minutes():
    steps = suite.steps(sys.executable)
    assert [s.name for s in steps] == ["pytest-gpu", "train_step", "profile-1024",
                                       "penalty-bf16", "ops", "compile"]
    assert suite.TOTAL_BUDGET_S <= 480
    # The steps' own budgets fit the total; the wheel install (when wheels are missing) and
    # the machine lines are on the same clock, and a step never gets more than what is left.
    assert sum(s.budget_s for s in steps) <= suite.TOTAL_BUDGET_S
    assert any(a == "-m" for a in steps[0].argv) and "gpu" in steps[0].argv


def test_a_step_over_its_budget_is_killed_and_the_interpreter_is_off(tmp_path, monkeypatch):
    slow = suite.Step("slow", 1, [sys.executable, "-c",
                                  "import os, time; print('TI', os.environ.get("
                                  "'TRITON_INTERPRET')); time.sleep(60)"], None)
    # monkeypatch restores the suite-wide value (tests/conftest.py) for the tests after this.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    t0 = time.monotonic()
    o = suite.run_step(slow, tmp_path, 2.0, fake=False)
    assert o.status == "timed out after 2 s" and time.monotonic() - t0 < 20
    assert "TI None" in Path(o.log).read_text()


def test_wheels_missing_is_reported(tmp_path):
    lines = []
    assert suite.install_wheels(sys.executable, tmp_path / "none", ["kornia"], lines.append) \
        is False
    assert "no wheel folder" in lines[0]
    assert suite.install_wheels(sys.executable, tmp_path, [], lines.append) is True
    assert suite.missing_modules({"json": "json", "no_such_module_xyz": "x"}) == \
        ["no_such_module_xyz"]


def test_fake_cuda_run_of_every_step(tmp_path):
    # A relative RESULTS_DIR is the caller's: resolved before the script changes directory.
    proc = subprocess.run(["bash", str(SUITE), "out", "--fake-cuda", "--wheels",
                           str(tmp_path / "no-wheels")], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=600)
    out = tmp_path / "out"
    summary = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
    logs = {p.name: p.read_text()[-1500:] for p in out.glob("*.log")}
    assert "FAKE CUDA" in (out / "machine.txt").read_text()
    for name in ("train_step", "profile-1024", "penalty-bf16", "ops", "compile"):
        assert f"| {name} | ok |" in summary, (summary, logs)
    # The gpu tests are collected (and run on a GPU) even when some other test module fails
    # to import; such a module still fails the step (and the suite), naming itself.
    pytest_log = logs["pytest-gpu.log"]
    assert "tests collected" in pytest_log, pytest_log
    if "| pytest-gpu | ok |" not in summary:
        assert "ERROR collecting" in pytest_log and proc.returncode == 1, pytest_log
    else:
        assert proc.returncode == 0, (proc.stdout[-2000:], summary, logs)
    # Each step's tables in its own folder.
    ts = (out / "train_step" / "train_step.md").read_text()
    assert "## Fused resampling convolutions vs unfused" in ts
    assert "| 8 | stab | 1 |" in ts
    pen = (out / "penalty-bf16" / "train_step.md").read_text()
    assert "loss.penalty_precision=bf16" in pen
    prof = (out / "profile-1024" / "profile.md").read_text()
    assert "## Top kernels" in prof and "device busy" in prof
    assert "phase G_main forward" in prof and "optimizer D step" in prof, prof
    assert (out / "ops" / "ops.md").exists()
    # The compile step: each compiled case beside its eager twin (aot_eager stands in on CPU).
    comp = (out / "compile" / "train_step.md").read_text()
    assert "## train.compile vs eager, same network and step" in comp
    assert "| 8 | stab | auto (ref), bf16, channels_last, fused auto | aot_eager |" in comp, comp
