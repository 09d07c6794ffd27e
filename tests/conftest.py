"""Test-wide setup. TRITON_INTERPRET must be set before Triton is imported (`import torch` may
import it already), so that impl='triton' runs the interpreter on CPU tensors. It is set only
where there is no NVIDIA driver (or where the caller sets it): on a GPU machine
`python -m pytest -m gpu` runs the compiled kernels."""
import os

if "TRITON_INTERPRET" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


