#!/usr/bin/env bash
# Durable pushes on one herald node, with SQLite and with PostgreSQL: pushes per second
# and CPU per push (S4, closed loop) and publish → device latency at fixed rates (S5),
# 10,000 connected users whose clients ack every stored message.
#
# Usage: bench/durable.sh [sqlite|postgres|both] [rates]   (default: both 1000,10000)
# PostgreSQL runs in a temporary cluster of its own (initdb), with fsync on.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-both}"
rates="${2:-1000,10000}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p herald -p herald-bench
herald="$target_dir/release/herald"
bench="$target_dir/release/herald-bench"
ulimit -n 20000
work=$(mktemp -d)
pg_pid=""
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
  if [ -n "$pg_pid" ]; then run_pg pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pgbin/$1" "${@:2}"; else "$pgbin/$1" "${@:2}"; fi
}

measure() {
  local label=$1; shift
  local port; port=$(free_port)
  env "$@" HERALD_LOG=warn taskset -c 0 "$herald" --dev-auth --listen "127.0.0.1:$port" \
    --data-dir "$work/data-$label" >/dev/null &
  server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  taskset -c 1 "$bench" suite --target "127.0.0.1:$port" --server-pid "$server" --label "$label" \
    --durable --ack --http-connections 64 --scenarios unicast,latency --unicast-rounds 2 \
    --rates "$rates" --rate-secs 10 --sources 127.0.0.1,127.0.0.2 --out "$work/results.jsonl"
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
}

if [ "$which" = sqlite ] || [ "$which" = both ]; then
  measure herald-sqlite
fi
if [ "$which" = postgres ] || [ "$which" = both ]; then
  mkdir -p "$work/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$work" "$work/pg"
  pgport=$(free_port)
  run_pg initdb -D "$work/pg" -A trust -U postgres >/dev/null
  run_pg pg_ctl -D "$work/pg" -o "-p $pgport -k $work -c listen_addresses=127.0.0.1" \
    -l "$work/pg.log" -w start >/dev/null
  pg_pid=1
  run_pg createdb -h 127.0.0.1 -p "$pgport" -U postgres herald
  measure herald-postgres HERALD_STORE_URL="postgres://postgres@127.0.0.1:$pgport/herald"
fi
echo
echo "raw results: (kept below)"
cat "$work/results.jsonl"
