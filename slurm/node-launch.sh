#!/usr/bin/env bash
# One node's part of slurm/train.sbatch, run by srun as the single task on each node:
# starts the launcher for this node's processes and hands USR1 to them.
#
#   srun --ntasks-per-node=1 bash slurm/node-launch.sh pggan/train.py --resume auto ARGS...
#
# The rendezvous (machine rank, main host, port, process count) comes from
# `python -m pggan.training.dist_env`; PGGAN_LAUNCHER picks accelerate (default) or torchrun,
# PGGAN_USE_CPU=1 runs gloo processes on CPU, PGGAN_ACCELERATE_CONFIG adds a config file.
#
# USR1 must reach the training processes (the launcher's children) and must not kill anything
# else. A signal srun forwards to a step reaches every process of the step, and torch's elastic
# agent (inside accelerate launch and torchrun) does not handle USR1: it would die of it. So the
# launcher starts with USR1 ignored; the trainer installs its own handler, and its forked
# data-loader workers share that handler. This script also passes USR1 on to the launcher's
# children, for when only it is signalled (run outside srun, or a proctrack plugin that signals
# one process).
set -uo pipefail

die() { echo "node-launch: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: $0 TRAIN_SCRIPT [ARGS...]"

PYTHON=${PGGAN_PYTHON:-python}
LAUNCHER=${PGGAN_LAUNCHER:-accelerate}
host=$(hostname -s)

case $LAUNCHER in
    accelerate) which_args=--accelerate-args; launcher=("$PYTHON" -m accelerate.commands.launch) ;;
    torchrun) which_args=--torchrun-args; launcher=("$PYTHON" -m torch.distributed.run) ;;
    *) die "PGGAN_LAUNCHER=$LAUNCHER: use accelerate or torchrun" ;;
esac
rdzv=$("$PYTHON" -m pggan.training.dist_env "$which_args") || exit 2
eval "rdzv_args=($rdzv)"   # shell-quoted by dist_env (shlex.join)

if [[ $LAUNCHER == accelerate && -n ${PGGAN_ACCELERATE_CONFIG:-} ]]; then
    [[ -f $PGGAN_ACCELERATE_CONFIG ]] || die "PGGAN_ACCELERATE_CONFIG=$PGGAN_ACCELERATE_CONFIG: file not found"
    launcher+=(--config_file "$PGGAN_ACCELERATE_CONFIG")
elif [[ $LAUNCHER == accelerate ]]; then
    # accelerate's own defaults, stated so it does not warn; the trainer picks its precision.
    launcher+=(--mixed_precision no --dynamo_backend no)
fi
case ${PGGAN_USE_CPU:-0} in
    1|true|yes|on)
        # accelerate: --multi_gpu with ACCELERATE_USE_CPU=1 starts N gloo processes
        # (`--cpu --num_processes N` would start one); torchrun needs nothing more.
        export ACCELERATE_USE_CPU=1 ;;
esac

# children_of PID: PIDs whose parent is PID, read from /proc.
children_of() {
    local stat_file stat fields
    for stat_file in /proc/[0-9]*/stat; do
        read -r stat 2>/dev/null < "$stat_file" || continue
        # Fields after "pid (comm) ": state ppid ...; comm may contain spaces and parentheses.
        read -r -a fields <<< "${stat##*) }"
        [[ ${fields[1]} == "$1" ]] && { stat_file=${stat_file#/proc/}; echo "${stat_file%/stat}"; }
    done
}

launcher_pid=
trapped=0
on_usr1() {
    trapped=1
    [[ -n $launcher_pid ]] || return
    local workers
    workers=$(children_of "$launcher_pid" | tr '\n' ' ')
    echo "[node-launch $host] USR1 -> training processes ${workers:-(none yet)}"
    for pid in $workers; do kill -USR1 "$pid" 2>/dev/null; done
}
trap on_usr1 USR1

echo "[node-launch $host] ${launcher[*]} ${rdzv_args[*]} $*"
(trap '' USR1; exec "${launcher[@]}" "${rdzv_args[@]}" "$@") &
launcher_pid=$!

while :; do
    trapped=0
    wait "$launcher_pid"
    rc=$?
    # A trap makes wait return early (status > 128) without the launcher's status: wait again.
    (( trapped && rc > 128 )) && continue
    break
done
exit "$rc"
