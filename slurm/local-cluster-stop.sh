#!/usr/bin/env bash
# Stop the one-node cluster started by slurm/local-cluster-start.sh STATE_DIR: slurmd, slurmctld
# and munged, each by the PID in its pid file (SIGTERM, then SIGKILL after
# LOCAL_SLURM_STOP_TIMEOUT_S seconds, default 15). Leaves STATE_DIR and its logs in place.
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 1; }
STATE_DIR=$1
TIMEOUT_S=${LOCAL_SLURM_STOP_TIMEOUT_S:-15}
status=0

# stop NAME PIDFILE: TERM the PID if it is still that daemon, wait, KILL if it lingers.
stop() {
    local name=$1 pidfile=$2 pid comm deadline
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || { echo "local-cluster-stop: $pidfile holds no PID" >&2; status=1; return; }
    # A stale pid file may name an unrelated process by now: only signal the named daemon.
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || { rm -f "$pidfile"; return 0; }
    if [[ $comm != "$name" ]]; then
        echo "local-cluster-stop: PID $pid is '$comm', not $name; leaving it" >&2
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + TIMEOUT_S))
    while kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/stat" 2>/dev/null | awk '{print $3}') != Z ]]; do
        if (( SECONDS >= deadline )); then
            echo "local-cluster-stop: $name (PID $pid) ignored SIGTERM for ${TIMEOUT_S}s; killing" >&2
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

# Cancel what is still queued or running so no job processes outlive the daemons.
if [[ -s $STATE_DIR/slurm.conf && -s $STATE_DIR/slurmctld.pid ]]; then
    export SLURM_CONF=$STATE_DIR/slurm.conf
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        timeout 10 scancel --full $jobs 2>/dev/null
        deadline=$((SECONDS + TIMEOUT_S))
        while [[ -n $(timeout 10 squeue -h -o %i -t R,CG,PD 2>/dev/null) ]] && (( SECONDS < deadline )); do
            sleep 0.5
        done
    fi
fi

stop slurmd "$STATE_DIR/slurmd.pid"
stop slurmctld "$STATE_DIR/slurmctld.pid"
stop munged "$STATE_DIR/munged.pid"
rm -f "$STATE_DIR/munge/munged.pid"

if [[ -s $STATE_DIR/added-hosts-entry ]]; then
    host=$(<"$STATE_DIR/added-hosts-entry")
    # Drop only the line local-cluster-start.sh appended.
    grep -vxF "127.0.0.1 $host  # local-cluster-start" /etc/hosts > /etc/hosts.local-cluster.tmp \
        && cat /etc/hosts.local-cluster.tmp > /etc/hosts
    rm -f /etc/hosts.local-cluster.tmp "$STATE_DIR/added-hosts-entry"
fi
exit $status
