#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py: installs slurm-wlm and munge
# (Debian) when missing, writes the munge key, slurm.conf and cgroup.conf, starts munged, slurmctld
# and slurmd, and waits until sinfo shows the node idle. Idempotent: run it again and it leaves a
# running cluster as it is (or restarts the daemons when the configuration changed). Needs root.
#
#   .ci/slurm-up.sh          # start (or check) the cluster
#   .ci/slurm-up.sh stop     # stop the daemons, by the process ids in their pid files
set -euo pipefail

NODE="$(hostname -s)"
CONF_DIR=/etc/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)

say() { echo "slurm-up: $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemons() {
    for pid_file in "${PIDS[@]}"; do
        if alive "$pid_file"; then
            pid="$(cat "$pid_file")"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            say "stopped $(basename "$pid_file" .pid) (pid $pid)"
        fi
    done
}

if [ "${1:-}" = "stop" ]; then
    stop_daemons
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    say "needs root (it installs packages and starts daemons)" >&2
    exit 1
fi

# -- packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sinfo >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# -- munge ------------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || { say "munge does not answer (see /var/log/munge/munged.log)" >&2; exit 1; }

# -- configuration ----------------------------------------------------------------------------
CPUS="$(nproc)"
MEMORY_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# Finished jobs stay listed (squeue --states=all) for MinJobAge seconds; the scheduler runs
# often and a stopped job gets KillWait seconds between SIGTERM and SIGKILL.
cat > /tmp/slurm.conf.new <<EOF
ClusterName=emojax
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=1,sched_min_interval=100000
ReturnToService=2
MinJobAge=900
KillWait=10
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat > /tmp/cgroup.conf.new <<EOF
CgroupPlugin=cgroup/v1
CgroupAutomount=no
IgnoreSystemd=yes
EOF
changed=0
for name in slurm.conf cgroup.conf; do
    if ! cmp -s "/tmp/$name.new" "$CONF_DIR/$name"; then
        mv "/tmp/$name.new" "$CONF_DIR/$name"
        changed=1
    else
        rm -f "/tmp/$name.new"
    fi
done
if [ "$changed" = 1 ] && { alive /run/slurmctld.pid || alive /run/slurmd.pid; }; then
    say "configuration changed: restarting the daemons"
    for pid_file in /run/slurmd.pid /run/slurmctld.pid; do
        if alive "$pid_file"; then
            pid="$(cat "$pid_file")"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
    done
fi

# -- daemons ----------------------------------------------------------------------------------
alive /run/slurmctld.pid || /usr/sbin/slurmctld
alive /run/slurmd.pid || /usr/sbin/slurmd

for _ in $(seq 120); do
    state="$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mix|alloc) say "node $NODE is $state"; exit 0 ;;
        drain*|down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
say "node $NODE is not idle after 60 s (state '${state:-unknown}'; see /var/log/slurm/slurmctld.log and slurmd.log)" >&2
exit 1
