#!/usr/bin/env bash
# Durable pushes on one herald node, with SQLite and with PostgreSQL: pushes per second
# and CPU per push (S4, closed loop) and publish → device latency at fixed rates (S5),
# 10,000 connected users whose clients ack every stored message.
#
# Usage: bench/durable.sh [sqlite|postgres|both|webhooks] [rates]   (default: both 1000,10000)
# PostgreSQL runs in a temporary cluster of its own (initdb), with fsync on.
# `webhooks`: SQLite with webhooks off, then on (the three message events, to a local receiver
# that answers 204; each acked push then also writes a receipt, an outbox event, and
# posts it), side by side.
set -euo pipefail
# No drain when a server is stopped between runs.
export HERALD_SHUTDOWN_GRACE_SECS=0 HERALD_SHUTDOWN_DRAIN_SECS=0
# The load comes from a few loopback addresses: herald's per-address limits are off.
export HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP=0 HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC=0 \
  HERALD_TRANSPORT_MAX_SESSIONS_PER_IP=0
cd "$(dirname "$0")/.."
which="${1:-both}"
rates="${2:-1000,10000}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p herald -p herald-bench
herald="$target_dir/release/herald"
bench="$target_dir/release/herald-bench"
ulimit -n 20000
work=$(mktemp -d)
source bench/services.sh
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
  [ -n "${sink:-}" ] && kill "$sink" 2>/dev/null || true
  stop_pg
  rm -rf "$work"
}
trap cleanup EXIT

measure() {
  local label=$1; shift
  local port; port=$(free_port)
  env "$@" HERALD_LOG=warn taskset -c 0 "$herald" --dev-auth --listen "127.0.0.1:$port" \
    --data-dir "$work/data-$label" >/dev/null &
  server=$!
  wait_port "$port"
  taskset -c 1 "$bench" suite --target "127.0.0.1:$port" --server-pid "$server" --label "$label" \
    --durable --ack --http-connections 64 --scenarios unicast,latency --unicast-rounds 2 \
    --rates "$rates" --rate-secs 10 --sources 127.0.0.1,127.0.0.2 --out "$work/results.jsonl"
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
}

if [ "$which" = sqlite ] || [ "$which" = both ]; then
  measure herald-sqlite
fi
if [ "$which" = webhooks ]; then
  sink_port=$(free_port)
  taskset -c 1 "$bench" sink --listen "127.0.0.1:$sink_port" >"$work/sink.log" &
  sink=$!
  wait_port "$sink_port"
  measure herald-sqlite
  measure herald-sqlite-webhooks HERALD_WEBHOOKS_URL="http://127.0.0.1:$sink_port/hook" \
    HERALD_WEBHOOKS_EVENTS=message.delivered,message.read,message.undelivered \
    HERALD_WEBHOOKS_SECRET=bench
  tail -1 "$work/sink.log"
fi
if [ "$which" = postgres ] || [ "$which" = both ]; then
  start_pg
  run_pg createdb -h 127.0.0.1 -p "$pg_port" -U postgres herald
  measure herald-postgres HERALD_STORE_URL="postgres://postgres@127.0.0.1:$pg_port/herald"
fi
echo
echo "raw results: (kept below)"
cat "$work/results.jsonl"
