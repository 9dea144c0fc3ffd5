#!/usr/bin/env bash
# Runs the Workload API benchmark with SPIRE agent beside the floor and
# attestd, in the same alternating rounds:
#   benches/spire.sh [BENCH ARGS...]          e.g. benches/spire.sh --mode new-conn
# Builds spire-server and spire-agent (SPIRE_VERSION, default 1.13.3) from
# the Go module proxy into target/spire-<version>/ once (tests/spire/build.sh),
# starts a server and an agent pinned to the servers' CPU (join token, unix workload attestor,
# everything under a temporary directory), registers this uid with a short
# X.509-SVID lifetime (SPIRE_X509_TTL seconds, default 30, so the streams
# mode sees a rotation), and passes the agent to the harness as
# --external spire=SOCKET:PID. See benches/README.md, "SPIRE agent".
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

version=${SPIRE_VERSION:-1.13.3}
ttl=${SPIRE_X509_TTL:-30}
bin=$(SPIRE_VERSION="$version" tests/spire/build.sh)

work=$(mktemp -d /tmp/spire-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/server" "$work/agent"

cat > "$work/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "18081"
    socket_path = "$work/server/api.sock"
    trust_domain = "bench.example"
    data_dir = "$work/server/data"
    log_level = "WARN"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$work/server/data/datastore.sqlite3"
        }
    }
    KeyManager "memory" { plugin_data {} }
    NodeAttestor "join_token" { plugin_data {} }
}
EOF
cat > "$work/agent.conf" <<EOF
agent {
    data_dir = "$work/agent/data"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "18081"
    socket_path = "$work/agent/api.sock"
    trust_domain = "bench.example"
    insecure_bootstrap = true
}
plugins {
    NodeAttestor "join_token" { plugin_data {} }
    KeyManager "memory" { plugin_data {} }
    WorkloadAttestor "unix" { plugin_data {} }
}
EOF

# Every descriptor allowed: the streams mode holds one connection per stream.
ulimit -n "$(ulimit -Hn)"
server_socket="$work/server/api.sock"
agent_socket="$work/agent/api.sock"

# Polls COMMAND... once a second for up to $1 seconds.
retry() {
    local seconds=$1
    shift
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "timed out waiting for: $*" >&2
    return 1
}

echo "==> starting spire-server and spire-agent $version on CPU 0 (logs in $work)"
taskset -c 0 "$bin/spire-server" run -config "$work/server.conf" >"$work/server.log" 2>&1 &
pids+=($!)
retry 60 "$bin/spire-server" healthcheck -socketPath "$server_socket"
token=$("$bin/spire-server" token generate -socketPath "$server_socket" \
    -spiffeID spiffe://bench.example/node | awk '{print $2}')
"$bin/spire-server" entry create -socketPath "$server_socket" \
    -parentID spiffe://bench.example/node -spiffeID spiffe://bench.example/agent \
    -selector "unix:uid:$(id -u)" -x509SVIDTTL "$ttl" >/dev/null
taskset -c 0 "$bin/spire-agent" run -config "$work/agent.conf" -joinToken "$token" >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
# Serving once the agent has synced the entry and minted the SVID.
retry 60 "$bin/spire-agent" api fetch x509 -socketPath "$agent_socket"

cargo bench --quiet --bench workload_api -- \
    --external "spire=$agent_socket:$agent_pid" --push-deadline "$((ttl + 15))s" "$@"
