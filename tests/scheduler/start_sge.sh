#!/usr/bin/env bash
# Install and start a two-host Grid Engine (SGE 8.1.9) on this machine (Debian 12, as root, no
# systemd): qmaster on this host (also the submit host), one execd on each compute node ktnode1,
# ktnode2 (network namespaces, see common.sh). Queue all.q on both with PEs `smp` (one host:
# allocation_rule $pe_slots) and `mpi` (one slot per host: allocation_rule 1, control_slaves TRUE,
# so mpirun starts its daemons through `qrsh -inherit`), a consumable `gpu` complex with 4 per
# host (counted only: training runs on CPU), root allowed to run jobs, a scheduler that starts jobs
# within a second and accounting (`qacct`) flushed every second. Also installs Open MPI (mpirun is
# how the launcher reaches the other hosts of a Grid Engine job) and an sshd on each node that lets
# this host's root in with a key of its own, for mpirun's other way to reach hosts (the PBS path).
# Idempotent: daemons already up are left running. Exits non-zero, naming what failed, if a daemon
# does not come up or a two-host job does not run. Source /etc/profile.d/gridengine.sh to use it.
set -euo pipefail

GRIDENGINE_VERSION="8.1.9*"  # upstream version; Debian revisions differ per package
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SCRIPT=start_sge.sh DAEMON_LOGS="/var/spool/gridengine/qmaster/messages /var/spool/gridengine/execd/*/messages"
source "$(dirname "$0")/common.sh"

if ! command -v sge_qmaster >/dev/null || ! command -v sge_execd >/dev/null || ! command -v qsub >/dev/null \
        || ! command -v mpirun >/dev/null; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    for package in gridengine-common gridengine-master gridengine-exec gridengine-client; do
        debconf-set-selections <<EOF
$package shared/gridengineconfig boolean true
$package shared/gridenginecell string default
$package shared/gridenginemaster string $host
EOF
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "gridengine-master=$GRIDENGINE_VERSION" "gridengine-exec=$GRIDENGINE_VERSION" \
        "gridengine-client=$GRIDENGINE_VERSION" "gridengine-common=$GRIDENGINE_VERSION" openmpi-bin >/dev/null \
        || fail "apt-get install failed"
fi
[ -d "$SGE_ROOT/$SGE_CELL/common" ] || fail "the package did not create the cell $SGE_ROOT/$SGE_CELL"

# Loopback clients must resolve to the host name, before qmaster starts.
aliases="$host localhost localhost.localdomain $(hostname -f 2>/dev/null || true)"
echo "$aliases" > "$SGE_ROOT/$SGE_CELL/common/host_aliases"
start_node_network

qmaster_up() { qstat -f >/dev/null 2>&1; }
if ! qmaster_up; then
    pid=$(cat /var/spool/gridengine/qmaster/qmaster.pid 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && fail "sge_qmaster (pid $pid) runs but does not answer"
    /usr/sbin/sge_qmaster || fail "sge_qmaster did not start"
fi
wait_for 30 sge_qmaster qmaster_up

# Configuration is changed through qconf's own editor round trip (sed as $EDITOR), so every
# attribute this version needs stays there.
edit_with() { # edit_with <sed expressions> -- <qconf args...>: qconf opens its template in $EDITOR
    local script=/tmp/sge_editor.$$ expressions=$1; shift
    printf '#!/bin/sh\nsed -i %s "$1"\n' "$expressions" > "$script" && chmod +x "$script"
    EDITOR=$script "$@" >/dev/null; local status=$?; rm -f "$script"; return $status
}
execd_pid() { cat "/var/spool/gridengine/execd/$1/execd.pid" 2>/dev/null; }
execd_up() { local pid; pid=$(execd_pid "$1") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
any_execd_up() { for node in $NODES; do execd_up "$node" && return 0; done; return 1; }

# Global config: root may run jobs; accounting flushed every second (reporting_params spans
# continuation lines: replace the whole range); execds report every 3 s (40 s by default): a job
# rescheduled by exit 99 (requeue in place) runs again on a host only once its execd reported the
# previous run cleaned up, so a test chaining runs waits seconds, not a minute, between them.
execd_config_changed=0
qconf -sconf global | grep -q '^min_uid *0$' || execd_config_changed=1
qconf -sconf global | grep -q '^load_report_time *00:00:03$' || execd_config_changed=1
edit_with "-e 's/^load_report_time .*/load_report_time 00:00:03/' -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' -e '/^reporting_params/,/[^\\\\]\$/c reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00'" \
    qconf -mconf global || fail "cannot change the global configuration"
qconf -sconf global | grep -q '^min_uid *0$' || fail "min_uid 0 did not take"
if [ "$execd_config_changed" = 1 ] && any_execd_up; then  # execd keeps the old limit and interval: restart it
    qconf -ke all >/dev/null 2>&1 || true
    for _ in $(seq 60); do any_execd_up || break; sleep 0.25; done
fi

# Scheduler: start jobs at once.
edit_with "-e 's/^schedule_interval .*/schedule_interval 0:0:1/' -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/'" \
    qconf -msconf || fail "cannot change the scheduler configuration"

# The `gpu` complex: an integer consumable (per slot), requestable, 0 unless asked for.
qconf -sc > /tmp/sge_complex.$$
grep -q '^gpu ' /tmp/sge_complex.$$ || {
    echo "gpu gpu INT <= YES YES 0 0" >> /tmp/sge_complex.$$
    qconf -Mc /tmp/sge_complex.$$ >/dev/null || fail "cannot add the gpu complex"
}
rm -f /tmp/sge_complex.$$

# Hosts: this one submits and administers; the nodes execute (and submit: qrsh -inherit, nested jobs).
qconf -sh 2>/dev/null | grep -qx "$host" || qconf -ah "$host" >/dev/null
qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host" >/dev/null
for node in $NODES; do
    qconf -sh 2>/dev/null | grep -qx "$node" || qconf -ah "$node" >/dev/null
    qconf -ss 2>/dev/null | grep -qx "$node" || qconf -as "$node" >/dev/null
    qconf -sel 2>/dev/null | grep -qx "$node" || {
        printf 'hostname %s\nload_scaling NONE\ncomplex_values gpu=4\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$node" > /tmp/sge_exec.$$
        qconf -Ae /tmp/sge_exec.$$ >/dev/null; rm -f /tmp/sge_exec.$$
    }
    qconf -se "$node" | grep -q 'complex_values *gpu=4' || qconf -mattr exechost complex_values gpu=4 "$node" >/dev/null
done
qconf -shgrp @allhosts >/dev/null 2>&1 || {
    printf 'group_name @allhosts\nhostlist %s\n' "$NODES" > /tmp/sge_hgrp.$$
    qconf -Ahgrp /tmp/sge_hgrp.$$ >/dev/null; rm -f /tmp/sge_hgrp.$$
}
[ "$(qconf -shgrp_resolved @allhosts)" = "$NODES" ] || qconf -mattr hostgroup hostlist "$NODES" @allhosts >/dev/null

qconf -sp smp >/dev/null 2>&1 || edit_with "-e 's/^slots .*/slots 9999/' -e 's/^allocation_rule .*/allocation_rule \$pe_slots/'" \
    qconf -ap smp || fail "cannot add PE smp"
qconf -sp mpi >/dev/null 2>&1 || edit_with "-e 's/^slots .*/slots 9999/' -e 's/^allocation_rule .*/allocation_rule 1/' -e 's/^control_slaves .*/control_slaves TRUE/' -e 's/^job_is_first_task .*/job_is_first_task TRUE/'" \
    qconf -ap mpi || fail "cannot add PE mpi"
qconf -sq all.q >/dev/null 2>&1 || edit_with "-e 's/^hostlist .*/hostlist @allhosts/' -e 's/^pe_list .*/pe_list smp mpi/' -e 's/^slots .*/slots $(nproc)/' -e 's/^shell .*/shell \/bin\/bash/' -e 's/^shell_start_mode .*/shell_start_mode unix_behavior/'" \
    qconf -aq all.q || fail "cannot add queue all.q"
qconf -sq all.q | grep -q '^pe_list *smp mpi$' || qconf -mattr queue pe_list "smp mpi" all.q >/dev/null
qconf -sq all.q | grep -q '^hostlist *@allhosts$' || qconf -mattr queue hostlist @allhosts all.q >/dev/null
# No load thresholds: a busy shared machine must not put the queue in alarm state (jobs would wait).
qconf -sq all.q | grep -q "^load_thresholds *NONE$" || qconf -rattr queue load_thresholds NONE all.q >/dev/null || fail "cannot clear load_thresholds of all.q"

for node in $NODES; do
    execd_up "$node" || node_exec "$node" "exec /usr/sbin/sge_execd" || fail "sge_execd of $node did not start"
done
for node in $NODES; do
    wait_for 30 "sge_execd (queue all.q@$node)" sh -c "qstat -f -q all.q@$node | grep -q 'all.q@$node.* BIP *[0-9/]* *[0-9.-]* *lx-amd64 *\$'"
done

# End to end: a two-host job with a GPU per host gets one slot on each host, reaches the second host
# through qrsh -inherit (what mpirun uses), and accounting sees it finish.
job=$(qsub -terse -o /dev/null -j y -pe mpi 2 -l gpu=1 <<'EOF'
test "$(cut -d' ' -f1 "$PE_HOSTFILE" | sort | tr '\n' ' ')" = "ktnode1 ktnode2 " || exit 3
qrsh -inherit -nostdin "$(tail -n 1 "$PE_HOSTFILE" | cut -d' ' -f1)" true
EOF
) || fail "qsub failed"
wait_for 60 "accounting of test job $job on both hosts" sh -c "qacct -j $job | grep -q '^exit_status *0'"
# mpirun outside Grid Engine's own launcher (the PBS path of the launcher) reaches the nodes by ssh.
start_node_sshd
cat > /etc/profile.d/gridengine.sh <<EOF
export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL
EOF
echo "Grid Engine up: SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL, queue all.q on ${NODES// /, } ($(nproc) slots, gpu=4 each), PEs smp, mpi; sshd on each node"
