#!/usr/bin/env bash
# Install and start a two-node SLURM cluster on this machine (Debian 12, as root, no systemd):
# munge, MariaDB, slurmdbd (so `sacct` works as on a real cluster) and slurmctld on this host; one
# slurmd on each compute node ktnode1, ktnode2 (network namespaces, see common.sh), each with 4
# GPUs the scheduler counts (gres gpu:4). Partition `debug`; accounting: cluster `kotomamba`,
# account `ci` with user root.
# Idempotent: daemons already up are left running (a changed configuration restarts them).
# Exits non-zero, naming what failed, if a daemon does not come up or a two-node job does not run.
set -euo pipefail

SLURM_VERSION="22.05.8*"  # upstream version; Debian security revisions change
SCRIPT=start_slurm.sh DAEMON_LOGS="/var/log/slurm/*.log"
source "$(dirname "$0")/common.sh"

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    # Package scripts must not try to start services (there is no init system to ask).
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "slurmctld=$SLURM_VERSION" "slurmd=$SLURM_VERSION" "slurm-client=$SLURM_VERSION" \
        "slurmdbd=$SLURM_VERSION" munge mariadb-server >/dev/null || fail "apt-get install failed"
fi

mkdir -p /etc/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd /run/munge /run/slurm
chown slurm:slurm /var/log/slurm /var/spool/slurmctld /run/slurm
chown munge:munge /run/munge

# munge: one key, daemon as user munge; its socket is a file, so the nodes use this one daemon.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
fi
wait_for 10 munged sh -c 'munge -n | unmunge'

# MariaDB for slurmdbd
if ! mysqladmin ping >/dev/null 2>&1; then
    /etc/init.d/mariadb start >/dev/null || fail "mariadb did not start"
fi
wait_for 30 mariadb mysqladmin ping
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbd-local';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbd-local
StorageLoc=slurm_acct_db
EOF
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf

# The nodes (common.sh). Their GPUs: slurmd drops file-less GPUs and refuses regular files, so
# they are character devices with the null device's numbers (nothing opens them; training runs on
# CPU with gloo, the GPUs are only counted).
start_node_network
for gpu in 0 1 2 3; do [ -c "$KT_RUN/gpu$gpu" ] || mknod "$KT_RUN/gpu$gpu" c 1 3; done
node_list=${NODES// /,}
node_lines=""
for node in $NODES; do
    node_lines+="NodeName=$node NodeAddr=$(node_address "$node") CPUs=$(nproc) RealMemory=8000 Gres=gpu:4 State=UNKNOWN"$'\n'
done
cat > /etc/slurm/gres.conf.new <<EOF
AutoDetect=off
NodeName=$node_list Name=gpu File=$KT_RUN/gpu[0-3]
EOF
# The controller's name must be this host's own; its address is the bridge's, which the nodes reach.
cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=kotomamba
SlurmctldHost=$host($BRIDGE_ADDRESS)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=300
KillWait=30
# A requeued job (requeue in place: kotomamba/train/requeue.py) may start again only once its launch
# credential expired (120 s by default), and then at the next scheduling pass (every 60 s by default):
# shorter here, so a test chaining jobs waits seconds, not minutes, between them.
AuthInfo=cred_expire=10
SchedulerParameters=bf_interval=2,sched_interval=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
${node_lines}PartitionName=debug Nodes=$node_list Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
changed=0
for conf in slurm gres; do
    cmp -s "/etc/slurm/$conf.conf.new" "/etc/slurm/$conf.conf" || changed=1
    mv "/etc/slurm/$conf.conf.new" "/etc/slurm/$conf.conf"
done

if ! pgrep -x slurmdbd >/dev/null; then
    /usr/sbin/slurmdbd || fail "slurmdbd did not start"
fi
wait_for 30 slurmdbd sacctmgr -n show cluster
sacctmgr -i add cluster kotomamba >/dev/null 2>&1 || true
sacctmgr -i add account ci Cluster=kotomamba Description=ci Organization=kotomamba >/dev/null 2>&1 || true
sacctmgr -i add user root Account=ci Cluster=kotomamba >/dev/null 2>&1 || true
sacctmgr -n -P show assoc where user=root account=ci | grep -q . || fail "no association root/ci in slurmdbd"

slurmd_up() { [ -s "/run/slurm/slurmd-$1.pid" ] && kill -0 "$(cat "/run/slurm/slurmd-$1.pid")" 2>/dev/null; }
slurm_running() {
    pgrep -x slurmctld >/dev/null && return 0
    for node in $NODES; do slurmd_up "$node" && return 0; done
    return 1
}
if [ "$changed" = 1 ] && slurm_running; then
    scontrol shutdown >/dev/null 2>&1 || true   # stops slurmctld and every slurmd
    for _ in $(seq 120); do slurm_running || break; sleep 0.25; done
fi
# A node once registered with other GRES stays invalid in the saved state: start clean after a change.
clear_state=""; [ "$changed" = 1 ] && clear_state=-c
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld $clear_state || fail "slurmctld did not start"
wait_for 30 slurmctld scontrol ping
for node in $NODES; do
    mkdir -p "/var/spool/slurmd/$node"
    slurmd_up "$node" || node_exec "$node" "exec /usr/sbin/slurmd -N $node" || fail "slurmd of $node did not start"
done
for node in $NODES; do
    wait_for 30 "slurmd (node $node idle)" sh -c "sinfo -h -n $node -o %t | grep -Eq '^(idle|mix|alloc)'"
done

# End to end: a two-node job with a GPU per node runs on both nodes and accounting sees it finish.
job=$(sbatch --parsable -A ci -t 1 -N 2 --ntasks-per-node=1 --gres=gpu:1 --mem 100 -o /dev/null \
      --wrap "srun hostname") || fail "sbatch failed"
wait_for 60 "accounting of test job $job on both nodes" \
    sh -c "sacct -n -X -P -j $job -o State,NodeList | grep -qx 'COMPLETED|ktnode\[1-2\]'"
echo "SLURM up: cluster kotomamba, partition debug, nodes $node_list ($(nproc) CPUs, 8000 MB, gpu:4 each), account ci"
