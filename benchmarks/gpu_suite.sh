#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the GPU tests (pytest -m gpu, compiled Triton
# kernels, not the interpreter) and every GPU benchmark. Tables and logs go to one folder:
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]     # default benchmarks/out/<date>-<host>
#
# Each step runs even if an earlier one failed; the exit status is non-zero if any failed.
# To add a benchmark, add one `run NAME COMMAND...` line below; it should write its tables
# into "$OUT".
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/out/$(date +%Y-%m-%d)-$(hostname -s)}"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "benchmarks/gpu_suite.sh: no CUDA device visible to torch; run it on a GPU machine" >&2
    exit 2
fi
mkdir -p "$OUT"
# The interpreter must be off: the tests and timings are of the compiled kernels.
export TRITON_INTERPRET=0

{
    echo "date: $(date -Iseconds)"
    echo "host: $(hostname)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    python -c "import torch, triton; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv 2>/dev/null || true
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

failed=()
run() {
    local name="$1"
    shift
    echo "== $name: $*"
    if "$@" 2>&1 | tee "$OUT/$name.log"; then
        echo "== $name: ok"
    else
        echo "== $name: FAILED (log: $OUT/$name.log)"
        failed+=("$name")
    fi
}

run pytest-gpu python -m pytest -m gpu tests -q -rs
run ops python benchmarks/ops.py --out "$OUT"
run train_step python benchmarks/train_step.py --fade --out "$OUT"

if ((${#failed[@]})); then
    echo "benchmarks/gpu_suite.sh: failed: ${failed[*]} (results in $OUT)" >&2
    exit 1
fi
echo "benchmarks/gpu_suite.sh: all steps passed; results in $OUT"
