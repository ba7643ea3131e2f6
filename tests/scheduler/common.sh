# Sourced by start_slurm.sh and start_sge.sh: a failure exit that shows the daemons' logs, waiting for a
# daemon, the root check, a resolvable host name, and the compute nodes both clusters run on.
# The sourcing script sets SCRIPT (its name) and DAEMON_LOGS (log paths; globs expand when it fails).
#
# Compute nodes: each node ktnodeN is a network namespace `ktN` with its own address 10.77.0.1N on a
# bridge `br-kt` (the host's end is 10.77.0.1), and each daemon of a node runs there in its own UTS
# namespace (hostname ktnodeN) and mount namespace (an /etc/hosts in which this machine's name is
# the bridge address: inside a node, 127.0.0.1 is the node's own loopback). File systems are shared,
# as on a cluster. Everything created here is named kt*/br-kt, and only that is touched.

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

NODES="ktnode1 ktnode2"
BRIDGE=br-kt BRIDGE_ADDRESS=10.77.0.1
KT_RUN=/run/kt                     # per-node hosts file, GPU device nodes
node_address() { echo "10.77.0.1${1#ktnode}"; }   # ktnode1 -> 10.77.0.11
node_netns() { echo "kt${1#ktnode}"; }             # ktnode1 -> kt1

# The bridge, one namespace per node with a veth pair into the bridge, and the names in /etc/hosts
# (the host's and the nodes' own). Idempotent: what exists is kept.
start_node_network() {
    command -v ip >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        iproute2 >/dev/null || fail "apt-get install iproute2 failed"
    mkdir -p "$KT_RUN"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || fail "cannot create bridge $BRIDGE"
        ip addr add "$BRIDGE_ADDRESS/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    printf '127.0.0.1 localhost\n%s %s\n' "$BRIDGE_ADDRESS" "$host" > "$KT_RUN/hosts"
    local node netns veth
    for node in $NODES; do
        netns=$(node_netns "$node") veth="v$(node_netns "$node")"
        [ -e "/run/netns/$netns" ] || ip netns add "$netns" || fail "cannot create network namespace $netns"
        if ip link show "$veth" >/dev/null 2>&1 && ! ip netns exec "$netns" ip link show "${veth}n" >/dev/null 2>&1; then
            ip link del "$veth"   # its peer is in an earlier namespace of that name, kept alive by a process in it
        fi
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name "${veth}n" || fail "cannot create veth $veth"
            ip link set "${veth}n" netns "$netns"
            ip netns exec "$netns" ip addr add "$(node_address "$node")/24" dev "${veth}n"
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip netns exec "$netns" ip link set lo up
        ip netns exec "$netns" ip link set "${veth}n" up
        grep -q "^$(node_address "$node") $node\$" /etc/hosts || echo "$(node_address "$node") $node" >> /etc/hosts
        echo "$(node_address "$node") $node" >> "$KT_RUN/hosts"
    done
}

# node_exec <node> <shell command>: run the command as node <node> (its network, hostname and
# /etc/hosts). nsenter rather than `ip netns exec`, which remounts /sys and hides the cgroup tree.
node_exec() {
    local node=$1; shift
    nsenter --net="/run/netns/$(node_netns "$node")" unshare --uts --mount sh -c \
        "mount --bind $KT_RUN/hosts /etc/hosts && hostname $node && $*"
}

# An sshd on every node that lets this host's root in with a key of its own ($KT_RUN/ssh/id_ed25519;
# root's ~/.ssh is not touched), for mpirun outside a scheduler's own launcher: the PBS path, where
# Open MPI reaches the hosts of $PBS_NODEFILE by ssh. Pass the key with
#   OMPI_MCA_plm_rsh_agent="ssh -i $KT_RUN/ssh/id_ed25519 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
start_node_sshd() {
    command -v /usr/sbin/sshd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends openssh-server >/dev/null || fail "apt-get install openssh-server failed"
    mkdir -p "$KT_RUN/ssh" /run/sshd && chmod 700 "$KT_RUN/ssh"
    [ -s "$KT_RUN/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$KT_RUN/ssh/id_ed25519"
    cp "$KT_RUN/ssh/id_ed25519.pub" "$KT_RUN/ssh/authorized_keys"
    local node pid
    for node in $NODES; do
        pid=$(cat "$KT_RUN/sshd-$node.pid" 2>/dev/null || true)
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && continue
        node_exec "$node" "exec /usr/sbin/sshd -o ListenAddress=$(node_address "$node") -o PidFile=$KT_RUN/sshd-$node.pid \
            -o PermitRootLogin=prohibit-password -o AuthorizedKeysFile=$KT_RUN/ssh/authorized_keys \
            -o StrictModes=no -o PasswordAuthentication=no" || fail "sshd of $node did not start"
    done
    for node in $NODES; do
        wait_for 15 "sshd of $node" ssh -i "$KT_RUN/ssh/id_ed25519" -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR "$node" true
    done
}
