"""Test-wide setup. TRITON_INTERPRET must be set before any Triton kernel module is imported so
that impl='triton' runs the interpreter on CPU tensors."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


