# Sourced by start_slurm.sh and start_sge.sh: a failure exit that shows the daemons' logs, waiting for a
# daemon, the root check and a resolvable host name (both schedulers need it).
# The sourcing script sets SCRIPT (its name) and DAEMON_LOGS (log paths; globs expand when it fails).

fail() {
    echo "$SCRIPT: $*" >&2
    for log in $DAEMON_LOGS; do
        [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
    done
    exit 1
}

wait_for() { # wait_for <seconds> <description> <command...>
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$((seconds * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    fail "$what did not come up within ${seconds}s"
}

[ "$(id -u)" = 0 ] || fail "must run as root"

host=$(hostname -s)
getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
