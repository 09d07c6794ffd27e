#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run of at most 8 minutes, on a bare offline GPU
# machine (torch, triton and accelerate installed; nothing else, no network):
#
#   bash benchmarks/gpu_suite.sh RESULTS_DIR [--wheels DIR] [--budget-s 480] [--only LIST]
#
# RESULTS_DIR (required) receives machine.txt, summary.md (rewritten after every step), one
# folder of tables per step and one log per step. Missing packages (kornia, kornia_rs,
# webdataset, braceexpand) are installed from the wheel folder brought along (default
# $PGGAN_WHEELS or ./wheels; the `pip download` line that makes it is in
# benchmarks/gpu_suite.py). Steps and their time budgets: benchmarks/gpu_suite.py. Exit status:
# 0 all steps passed, 1 a step failed or ran out of time, 2 no GPU / bad arguments.
set -uo pipefail

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: bash benchmarks/gpu_suite.sh RESULTS_DIR [--wheels DIR] [--budget-s S]" >&2
    exit 2
fi
# Resolve the results folder against the caller's directory before moving to the repository.
OUT="$(realpath -m -- "$1")"
shift
cd "$(dirname "$0")/.."
# The GPU tests and timings are of the compiled Triton kernels, never the interpreter.
unset TRITON_INTERPRET
exec python benchmarks/gpu_suite.py "$OUT" "$@"
