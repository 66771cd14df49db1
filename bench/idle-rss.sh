#!/usr/bin/env bash
# Idle RSS per WebSocket connection of herald alone: (RSS with N connections - RSS with
# 0) / N on one server process, at increasing counts held by herald-bench (S1 of
# bench/run.sh, which also measures the peers).
# Usage: bench/idle-rss.sh [counts...]   (default: 1000 10000 19500)
set -euo pipefail
# No drain when a server is stopped between runs.
export HERALD_SHUTDOWN_GRACE_SECS=0 HERALD_SHUTDOWN_DRAIN_SECS=0
# The load comes from a few loopback addresses: herald's per-address limits are off.
export HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP=0 HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC=0 \
  HERALD_TRANSPORT_MAX_SESSIONS_PER_IP=0
cd "$(dirname "$0")/.."
counts=("$@")
[ $# -eq 0 ] && counts=(1000 10000 19500)
steps=$(IFS=,; echo "${counts[*]}")
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p herald -p herald-bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ulimit -n 20000
data=$(mktemp -d /tmp/herald-idle.XXXXXX)
# Pin server and load to different cores when there are two.
server_cpu=0
load_cpu=$(( $(nproc) > 1 ? 1 : 0 ))
taskset -c "$server_cpu" "$target_dir/release/herald" --dev-auth --listen "127.0.0.1:$port" \
  --data-dir "$data" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
echo "| connections | server RSS before (KiB) | after (KiB) | per connection (bytes) |"
echo "|---|---|---|---|"
timeout 600 taskset -c "$load_cpu" "$target_dir/release/herald-bench" idle-ramp \
  --target "127.0.0.1:$port" --server-pid "$server" --steps "$steps" \
  --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 |
  python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("| %d | %d | %d | %.0f |" % (r["connections"], r["rss_before_kib"], r["rss_after_kib"], r["bytes_per_connection"]))
'
