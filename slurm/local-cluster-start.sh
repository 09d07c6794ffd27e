#!/usr/bin/env bash
# Start a one-node SLURM cluster by hand (no systemd): munged, slurmctld and slurmd, all
# configured and logging under STATE_DIR. Used by the preemption test and for trying the
# sbatch script on a workstation or CI runner. Needs root and Debian's slurm-wlm + munge.
#
#   slurm/local-cluster-start.sh STATE_DIR     # prints `export SLURM_CONF=STATE_DIR/slurm.conf`
#   source STATE_DIR/env                       # then sbatch / squeue / scontrol talk to it
#   slurm/local-cluster-stop.sh STATE_DIR      # stops the three daemons by their PIDs
#
# Environment: LOCAL_SLURM_CTLD_PORT (default 6817), LOCAL_SLURM_SLURMD_PORT (default 6818),
# LOCAL_SLURM_START_TIMEOUT_S (default 30, applies to each wait).
#
# Settings that matter on a container / VM without systemd (each one was needed):
#   NodeName = this host's real short name, resolvable (an /etc/hosts line is added if not);
#   SlurmdParameters=config_overrides  the node's real CPU/memory need not match slurm.conf;
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none  the cgroup plugins make every
#     job fail silently (sbatch --wait still returns 0), so check job output, not exit codes;
#   JobRequeue=1                      jobs may be requeued;
#   AuthInfo=cred_expire=10, SchedulerParameters=sched_interval=2  a requeued job starts
#     again after ~10 s instead of ~2 minutes.
set -euo pipefail

die() { echo "local-cluster-start: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 STATE_DIR"
STATE_DIR=$1
TIMEOUT_S=${LOCAL_SLURM_START_TIMEOUT_S:-30}
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}

[[ $(id -u) -eq 0 ]] || die "must run as root (munged runs as the munge user, slurmd starts jobs)"
for prog in munged munge unmunge slurmctld slurmd scontrol sinfo runuser; do
    command -v "$prog" >/dev/null || die "$prog not found: apt-get install -y slurm-wlm munge"
done
id munge >/dev/null 2>&1 || die "no 'munge' user: apt-get install -y munge"
[[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing: run 'mungekey --create' as munge"
if [[ -e $STATE_DIR/slurmctld.pid || -e $STATE_DIR/munged.pid ]]; then
    die "$STATE_DIR already holds a cluster: run slurm/local-cluster-stop.sh $STATE_DIR first"
fi

mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
# munged refuses sockets, logs and pid files in directories other users may write to, and the
# munge user must be able to reach its directory; clients need execute on the socket's dir.
chmod 0755 "$STATE_DIR"
mkdir -p "$STATE_DIR/munge" "$STATE_DIR/ctld" "$STATE_DIR/spool"
chown munge:munge "$STATE_DIR/munge"
chmod 0755 "$STATE_DIR/munge"
MUNGE_SOCKET=$STATE_DIR/munge/munge.socket
CONF=$STATE_DIR/slurm.conf

HOST=$(hostname -s)
if ! getent hosts "$HOST" >/dev/null; then
    echo "127.0.0.1 $HOST  # local-cluster-start" >> /etc/hosts
    echo "$HOST" > "$STATE_DIR/added-hosts-entry"
fi
CPUS=$(nproc)

cat > "$CONF.tmp" <<EOF
ClusterName=localcluster
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
MinJobAge=600
InactiveLimit=0
MailProg=/bin/true
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
printf 'export SLURM_CONF=%q\n' "$CONF" > "$STATE_DIR/env"

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS >= deadline )); then
            echo "local-cluster-start: $what not ready after ${limit}s" >&2
            return 1
        fi
        sleep 0.2
    done
}

# read_pid FILE: wait for a daemon's pid file (they write it after forking).
read_pid() {
    wait_for "$TIMEOUT_S" "pid file $1" test -s "$1" || return 1
    cat "$1"
}

fail() {
    echo "local-cluster-start: $*" >&2
    for log in munged.log slurmctld.log slurmd.log; do
        [[ -s $STATE_DIR/$log ]] && { echo "--- tail of $STATE_DIR/$log" >&2; tail -n 15 "$STATE_DIR/$log" >&2; }
    done
    "$(dirname "$0")/local-cluster-stop.sh" "$STATE_DIR" >&2 || true
    exit 1
}

export SLURM_CONF=$CONF

runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$STATE_DIR/munge/munged.pid" \
    --log-file="$STATE_DIR/munge/munged.log" --seed-file="$STATE_DIR/munge/munged.seed" \
    || fail "munged did not start"
read_pid "$STATE_DIR/munge/munged.pid" > "$STATE_DIR/munged.pid" || fail "munged wrote no pid file"
munge_ok() { munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET"; }
wait_for "$TIMEOUT_S" "munged" munge_ok || fail "munged does not answer on $MUNGE_SOCKET"

slurmctld -f "$CONF" || fail "slurmctld did not start"
read_pid "$STATE_DIR/slurmctld.pid" >/dev/null || fail "slurmctld wrote no pid file"
ctld_up() { scontrol ping | grep -q UP; }
wait_for "$TIMEOUT_S" "slurmctld" ctld_up || fail "slurmctld does not answer on port $CTLD_PORT"

slurmd -f "$CONF" || fail "slurmd did not start"
read_pid "$STATE_DIR/slurmd.pid" >/dev/null || fail "slurmd wrote no pid file"
node_idle() { [[ $(sinfo -h -n "$HOST" -o %t) == idle ]]; }
wait_for "$TIMEOUT_S" "node $HOST" node_idle || fail "node $HOST did not become idle ($(sinfo -h -n "$HOST" -o %t 2>&1))"

echo "export SLURM_CONF=$CONF"
