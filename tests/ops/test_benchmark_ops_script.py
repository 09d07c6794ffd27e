"""benchmarks/ops.py as a command: refuses clearly without a GPU, and its --smoke mode (tiny
shapes through the Triton interpreter) runs every requested op and writes its tables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_op_checks import needs_interpreter

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ops.py"


def _run(args, interpret):
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_gpu_in_one_line():
    proc = _run([], interpret=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "--smoke" in lines[0]


def test_bad_op_name_is_reported():
    proc = _run(["--smoke", "--ops", "bias_ack"], interpret=True)
    assert proc.returncode == 2 and "unknown op(s) ['bias_ack'] in --ops" in proc.stderr


@needs_interpreter
def test_smoke_writes_tables(tmp_path):
    proc = _run(["--smoke", "--ops", "fade_in,demod_coefficients", "--dtypes", "fp32",
                 "--no-step", "--out", str(tmp_path)], interpret=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "ops.json").read_text())
    assert data["copy_gbs"] > 0
    seen = {(r["op"], r["shape"], r["impl"]) for r in data["ops"]}
    assert seen == {("fade_in", s, impl) for s in ("4x8x4x4", "2x3x16x16")
                    for impl in ("eager", "triton")} | {
        ("demod_coefficients", "3x8x16x3", impl) for impl in ("eager", "triton")}
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in data["ops"])
    md = (tmp_path / "ops.md").read_text()
    assert "| fade_in | 2x3x16x16 | float32 | triton |" in md and "command:" in md
