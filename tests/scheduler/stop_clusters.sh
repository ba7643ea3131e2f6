#!/usr/bin/env bash
# Stop what start_slurm.sh and start_sge.sh started, by pid file or by the schedulers' own commands,
# and remove the compute nodes' network (namespaces kt*, bridge br-kt, their /etc/hosts lines).
# Installed packages, configuration and accounting databases are kept, so a later start is quick.
# Idempotent: what is not running is skipped.
set -uo pipefail
SCRIPT=stop_clusters.sh DAEMON_LOGS=""
source "$(dirname "$0")/common.sh"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default

stop_pid_file() { # stop_pid_file <file>: TERM the process it names, wait up to 15 s for it to go
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    echo "$SCRIPT: pid $pid ($1) did not stop" >&2
}

for node in $NODES; do stop_pid_file "$KT_RUN/sshd-$node.pid"; done

if command -v qconf >/dev/null && qstat -f >/dev/null 2>&1; then
    qconf -ke all >/dev/null 2>&1
    for node in $NODES; do
        for _ in $(seq 60); do [ -s "/var/spool/gridengine/execd/$node/execd.pid" ] || break; sleep 0.25; done
    done
    qconf -km >/dev/null 2>&1
fi
stop_pid_file /var/spool/gridengine/qmaster/qmaster.pid

if command -v scontrol >/dev/null && scontrol ping >/dev/null 2>&1; then
    scontrol shutdown >/dev/null 2>&1   # slurmctld and every slurmd
fi
for pid_file in /run/slurm/slurmctld.pid /run/slurm/slurmd-*.pid /run/slurm/slurmdbd.pid; do
    stop_pid_file "$pid_file"
done
[ -x /etc/init.d/mariadb ] && mysqladmin ping >/dev/null 2>&1 && /etc/init.d/mariadb stop >/dev/null
stop_pid_file /run/munge/munged.pid

for node in $NODES; do
    netns=$(node_netns "$node")
    # What still runs on a node (a job's process that left the job's process tree, which proctrack/linuxproc
    # cannot follow) would keep the namespace, and with it the veth pair, alive past the name's deletion.
    [ -e "/run/netns/$netns" ] && ip netns pids "$netns" | xargs -r kill -KILL 2> /dev/null
    [ -e "/run/netns/$netns" ] && ip netns del "$netns"   # its veth pair goes with it
    sed -i "/^$(node_address "$node") $node\$/d" /etc/hosts
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
echo "stopped: SLURM, Grid Engine, the nodes' sshd and network (packages and configuration kept)"
