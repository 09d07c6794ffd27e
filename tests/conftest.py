"""Test-wide setup. TRITON_INTERPRET must be set before any Triton kernel module is imported so
that impl='triton' runs the interpreter on CPU tensors. It is set only where there is no CUDA
device (or where the caller sets it): on a GPU machine `python -m pytest -m gpu` runs the
compiled kernels. `import torch` does not import Triton, so asking torch first is safe."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


