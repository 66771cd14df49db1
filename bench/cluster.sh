#!/usr/bin/env bash
# Three herald nodes through Redis and PostgreSQL (both started here, in a temporary
# directory): 10,000 receivers on node 1, pushes entering node 2 at fixed rates (publish →
# device latency across nodes), and the CPU of node 3, which holds none of the users.
#
# Usage: bench/cluster.sh [rates] [durable|volatile]   (default: 5000 durable)
set -euo pipefail
# No drain when a server is stopped between runs.
export HERALD_SHUTDOWN_GRACE_SECS=0 HERALD_SHUTDOWN_DRAIN_SECS=0
# The load comes from a few loopback addresses: herald's per-address limits are off.
export HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP=0 HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC=0 \
  HERALD_TRANSPORT_MAX_SESSIONS_PER_IP=0
cd "$(dirname "$0")/.."
rates="${1:-5000}"
mode="${2:-durable}"
durable_flag=""
[ "$mode" = durable ] && durable_flag="--durable --ack"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p herald -p herald-bench
herald="$target_dir/release/herald"
bench="$target_dir/release/herald-bench"
ulimit -n 20000
work=$(mktemp -d)
pids=()
source bench/services.sh
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_pg
  rm -rf "$work"
}
trap cleanup EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_redis
pids+=("$redis_pid")
start_pg
run_pg createdb -h 127.0.0.1 -p "$pg_port" -U postgres herald

ports=()
admin_ports=()
for n in 1 2 3; do
  port=$(free_port)
  admin=$(free_port)
  HERALD_LOG=warn HERALD_CLUSTER_REDIS="redis://127.0.0.1:$redis_port" HERALD_CLUSTER_NODE_ID="node$n" \
    HERALD_STORE_URL="postgres://postgres@127.0.0.1:$pg_port/herald" HERALD_ADMIN_LISTEN="127.0.0.1:$admin" \
    "$herald" --dev-auth --listen "127.0.0.1:$port" >/dev/null &
  pids+=($!)
  ports+=("$port")
  admin_ports+=("$admin")
  wait_port "$port"
done
node1=${pids[1]}; node3=${pids[3]}
before=$(cpu_ticks "$node3")
"$bench" suite --target "127.0.0.1:${ports[0]}" --api-target "127.0.0.1:${ports[1]}" --server-pid "$node1" \
  --label "herald-cluster-$mode" $durable_flag --http-connections 64 --scenarios latency --rates "$rates" \
  --rate-secs 10 --sources 127.0.0.1,127.0.0.2 --out "$work/results.jsonl"
after=$(cpu_ticks "$node3")
metrics=$(curl -s "127.0.0.1:${admin_ports[2]}/metrics" | grep '^herald_redis_received_total' | tail -1)
echo
echo "node 3 (holds no user): CPU $(( (after - before) * 10 )) ms during the run; $metrics"
echo "raw results:"
cat "$work/results.jsonl"
