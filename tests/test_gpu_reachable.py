"""The GPU tests are reachable: tests/conftest.py turns the Triton interpreter on only where
there is no NVIDIA driver (or where the caller asked for it), so `python -m pytest -m gpu` on a
CUDA machine runs the compiled kernels; the gpu marker selects the compiled-kernel tests; and
without CUDA they are reported as skipped, never as passed. (benchmarks/gpu_suite.sh, which runs
`pytest -m gpu` with the interpreter unset, is run end to end with fake CUDA in
tests/benchmarks/test_gpu_suite.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# Runs tests/conftest.py's module code under each (driver present?, TRITON_INTERPRET before)
# and prints TRITON_INTERPRET after it.
PROBE = r"""
import json, os, runpy, sys
real_exists = os.path.exists
out = []
for driver, before in json.loads(sys.argv[1]):
    os.environ.pop("TRITON_INTERPRET", None)
    if before is not None:
        os.environ["TRITON_INTERPRET"] = before
    os.path.exists = lambda p, d=driver: d if p == "/dev/nvidiactl" else real_exists(p)
    try:
        runpy.run_path(sys.argv[2])
    finally:
        os.path.exists = real_exists
    out.append(os.environ.get("TRITON_INTERPRET"))
print(json.dumps(out))
"""


def test_interpreter_only_without_a_driver_unless_asked():
    cases = [(False, None), (True, None), (True, "1"), (False, "0")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases),
                           str(REPO / "tests" / "conftest.py")], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # no driver: interpreter; driver: compiled kernels; an explicit setting is kept either way
    assert got == ["1", None, "1", "0"]


def test_gpu_marker_selects_the_compiled_kernel_tests_and_skips_them_without_cuda():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs",
                           "-p", "no:cacheprovider", "tests/ops/test_triton_gpu.py",
                           "tests/test_gpu_step.py"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    last = out.strip().splitlines()[-1]
    if torch.cuda.is_available():
        assert "passed" in last and "skipped" not in last, last
    else:
        assert "passed" not in last and "skipped" in last, last
        assert "needs a CUDA device" in out
        assert int(last.split()[0]) >= 5             # the gpu tests were collected
