#!/usr/bin/env bash
# Install and start a one-host Grid Engine (SGE 8.1.9) on this machine (Debian 12, as root, no
# systemd): qmaster + execd, queue all.q with a PE `smp`, root allowed to run jobs, a scheduler
# that starts jobs within a second and accounting (`qacct`) flushed every second.
# Idempotent: daemons already up are left running. Exits non-zero, naming what failed, if a daemon
# does not come up. Source the printed `SGE_ROOT`/`PATH` lines (or /etc/profile.d) to use it.
set -euo pipefail

GRIDENGINE_VERSION="8.1.9*"  # upstream version; Debian revisions differ per package
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SCRIPT=start_sge.sh DAEMON_LOGS="/var/spool/gridengine/qmaster/messages /var/spool/gridengine/execd/*/messages"
source "$(dirname "$0")/common.sh"

if ! command -v sge_qmaster >/dev/null || ! command -v sge_execd >/dev/null || ! command -v qsub >/dev/null; then
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
        "gridengine-client=$GRIDENGINE_VERSION" "gridengine-common=$GRIDENGINE_VERSION" >/dev/null \
        || fail "apt-get install failed"
fi
[ -d "$SGE_ROOT/$SGE_CELL/common" ] || fail "the package did not create the cell $SGE_ROOT/$SGE_CELL"

# Loopback clients must resolve to the host name, before qmaster starts.
aliases="$host localhost localhost.localdomain $(hostname -f 2>/dev/null || true)"
echo "$aliases" > "$SGE_ROOT/$SGE_CELL/common/host_aliases"

qmaster_up() { qstat -f >/dev/null 2>&1; }
if ! qmaster_up; then
    pkill_pid=$(cat /var/spool/gridengine/qmaster/qmaster.pid 2>/dev/null || true)
    [ -n "$pkill_pid" ] && kill -0 "$pkill_pid" 2>/dev/null && fail "sge_qmaster (pid $pkill_pid) runs but does not answer"
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
# Global config: root may run jobs; accounting flushed every second (reporting_params spans
# continuation lines: replace the whole range).
uid_changed=0
qconf -sconf global | grep -q '^min_uid *0$' || uid_changed=1
edit_with "-e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' -e '/^reporting_params/,/[^\\\\]\$/c reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00'" \
    qconf -mconf global || fail "cannot change the global configuration"
qconf -sconf global | grep -q '^min_uid *0$' || fail "min_uid 0 did not take"
if [ "$uid_changed" = 1 ] && pgrep -x sge_execd >/dev/null; then  # execd keeps the old limit: restart it
    qconf -ke all >/dev/null 2>&1 || true
    for _ in $(seq 60); do pgrep -x sge_execd >/dev/null || break; sleep 0.25; done
fi

# Scheduler: start jobs at once.
edit_with "-e 's/^schedule_interval .*/schedule_interval 0:0:1/' -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/'" \
    qconf -msconf || fail "cannot change the scheduler configuration"

qconf -sh 2>/dev/null | grep -qx "$host" || qconf -ah "$host" >/dev/null
qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host" >/dev/null
qconf -sel 2>/dev/null | grep -qx "$host" || {
    printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$host" > /tmp/sge_exec.$$
    qconf -Ae /tmp/sge_exec.$$ >/dev/null; rm -f /tmp/sge_exec.$$
}
qconf -shgrp @allhosts >/dev/null 2>&1 || {
    printf 'group_name @allhosts\nhostlist %s\n' "$host" > /tmp/sge_hgrp.$$
    qconf -Ahgrp /tmp/sge_hgrp.$$ >/dev/null; rm -f /tmp/sge_hgrp.$$
}
qconf -sp smp >/dev/null 2>&1 || edit_with "-e 's/^slots .*/slots 9999/' -e 's/^allocation_rule .*/allocation_rule \$pe_slots/'" \
    qconf -ap smp || fail "cannot add PE smp"
qconf -sq all.q >/dev/null 2>&1 || edit_with "-e 's/^hostlist .*/hostlist @allhosts/' -e 's/^pe_list .*/pe_list smp/' -e 's/^slots .*/slots $(nproc)/' -e 's/^shell .*/shell \/bin\/bash/' -e 's/^shell_start_mode .*/shell_start_mode unix_behavior/'" \
    qconf -aq all.q || fail "cannot add queue all.q"
# No load thresholds: a busy shared machine must not put the queue in alarm state (jobs would wait).
qconf -sq all.q | grep -q "^load_thresholds *NONE$" || qconf -rattr queue load_thresholds NONE all.q >/dev/null || fail "cannot clear load_thresholds of all.q"

if ! pgrep -x sge_execd >/dev/null; then
    /usr/sbin/sge_execd || fail "sge_execd did not start"
fi
wait_for 30 "sge_execd (queue all.q@$host)" sh -c "qstat -f -q all.q | grep -q 'all.q@$host.* BIP *[0-9/]* *[0-9.]* *lx-amd64 *\$'"

# End to end: a job runs and accounting sees it finish.
job=$(qsub -terse -b y -o /dev/null -j y true) || fail "qsub failed"
wait_for 60 "accounting of test job $job" sh -c "qacct -j $job | grep -q '^exit_status *0'"
cat > /etc/profile.d/gridengine.sh <<EOF
export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL
EOF
echo "Grid Engine up: SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL, queue all.q@$host ($(nproc) slots), PE smp"
