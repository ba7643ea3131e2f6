#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine (Debian 12, as root, no systemd):
# munge, MariaDB, slurmdbd (so `sacct` works as on a real cluster), slurmctld, slurmd.
# Idempotent: daemons already up are left running. Exits non-zero, naming what failed, if a
# daemon does not come up. Accounting: cluster `kotomamba`, account `ci` with user root.
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

# munge: one key, daemon as user munge
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

# The node line from what slurmd sees, memory lowered ~15% so the node is not drained.
node_line=$(slurmd -C | head -n 1)
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 85 / 100))/" <<<"$node_line")
cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=kotomamba
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
changed=1
cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf && changed=0
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf

if ! pgrep -x slurmdbd >/dev/null; then
    /usr/sbin/slurmdbd || fail "slurmdbd did not start"
fi
wait_for 30 slurmdbd sacctmgr -n show cluster
sacctmgr -i add cluster kotomamba >/dev/null 2>&1 || true
sacctmgr -i add account ci Cluster=kotomamba Description=ci Organization=kotomamba >/dev/null 2>&1 || true
sacctmgr -i add user root Account=ci Cluster=kotomamba >/dev/null 2>&1 || true
sacctmgr -n -P show assoc where user=root account=ci | grep -q . || fail "no association root/ci in slurmdbd"

if [ "$changed" = 1 ] && pgrep -x slurmctld >/dev/null; then
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 40); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.25; done
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || fail "slurmctld did not start"
wait_for 30 slurmctld scontrol ping
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || fail "slurmd did not start"
wait_for 30 "slurmd (node $host idle)" sh -c "sinfo -h -n $host -o %t | grep -Eq '^(idle|mix|alloc)'"

# End to end: a job runs and accounting sees it finish.
job=$(sbatch --parsable -A ci -t 1 -n 1 --mem 100 -o /dev/null --wrap true) || fail "sbatch failed"
wait_for 60 "accounting of test job $job" sh -c "sacct -n -X -P -j $job -o State | grep -q COMPLETED"
echo "SLURM up: cluster kotomamba, partition debug, node $host, account ci ($(sinfo -h -o '%c CPUs %m MB' | head -n 1))"
