#!/usr/bin/env bash
# Side by side, three nodes each: herald's cluster (volatile pushes, then durable ones
# through PostgreSQL) and socketioxide 0.18 with its Redis adapter (socketioxide-redis),
# all through one Redis (and one PostgreSQL for herald) started here in a temporary
# directory. 10,000 receivers on node 1; unicast pushes entering node 2 at a fixed rate
# (publish → device latency across nodes); node 3 holds none of the users, and what it
# costs is measured: its CPU over the measured window (/proc/PID/stat utime + stime, read
# by herald-bench) and the messages Redis hands it.
#
# Node 3's messages: herald counts them itself (`herald_redis_received_total`). For
# socketioxide, a redis-cli subscriber takes exactly node 3's subscription (the channels
# that appeared when node 3 started, plus the request channel every node shares) and
# counts what Redis sends it.
#
# Usage: bench/cluster-compare.sh [rate] [secs]   (default: 5000 10)
# CARGO_TARGET_DIR is honoured. BENCH_BIN_DIR=<dir> takes herald, herald-bench and
# socketioxide-peer from that directory and builds nothing.
set -euo pipefail
# No drain when a server is stopped between runs.
export HERALD_SHUTDOWN_GRACE_SECS=0 HERALD_SHUTDOWN_DRAIN_SECS=0
# The load comes from a few loopback addresses: herald's per-address limits are off.
export HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP=0 HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC=0 \
  HERALD_TRANSPORT_MAX_SESSIONS_PER_IP=0
cd "$(dirname "$0")/.."
rate="${1:-5000}"
secs="${2:-10}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  bin="$BENCH_BIN_DIR"
else
  bin="$target_dir/release"
  CARGO_TARGET_DIR="$target_dir" nice cargo build --release -q -p herald -p herald-bench
  CARGO_TARGET_DIR="$target_dir" nice cargo build --release -q --manifest-path bench/peers/socketioxide/Cargo.toml
fi
herald="$bin/herald"
bench="$bin/herald-bench"
peer="$bin/socketioxide-peer"
ulimit -n 20000
work=$(mktemp -d)
pids=()
nodes=()
source bench/services.sh
stop_nodes() {
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${nodes[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  nodes=()
}
cleanup() {
  stop_nodes
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_pg
  rm -rf "$work"
}
trap cleanup EXIT
# CPU ticks (user + system) of a process; with `all`, also of its exited children.
ticks() { awk -v all="${2:-}" '{print $14 + $15 + (all ? $16 + $17 : 0)}' "/proc/$1/stat"; }
# PostgreSQL: the postmaster, the backends that exited, and the ones alive.
pg_ticks() {
  local pm t p
  pm=$(head -1 "$work/pg/postmaster.pid")
  t=$(ticks "$pm" all)
  for p in $(pgrep -P "$pm"); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done
  echo "$t"
}
# Busy and total ticks of the whole machine.
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

start_redis
pids+=("$redis_pid")
rcli() { redis-cli -p "$redis_port" "$@"; }
start_pg

# start_node KIND N: starts node N (herald or socketioxide), appends its port and pid.
start_node() {
  local port admin
  port=$(free_port)
  admin=$(free_port)
  case "$1" in
    herald)
      HERALD_LOG=warn HERALD_CLUSTER_REDIS="redis://127.0.0.1:$redis_port" HERALD_CLUSTER_NODE_ID="node$2" \
        HERALD_STORE_URL="postgres://postgres@127.0.0.1:$pg_port/$db" HERALD_ADMIN_LISTEN="127.0.0.1:$admin" \
        "$herald" --dev-auth --listen "127.0.0.1:$port" >"$work/$run-node$2.log" 2>&1 &
      ;;
    socketioxide)
      REDIS_URL="redis://127.0.0.1:$redis_port" PORT=$port "$peer" >"$work/$run-node$2.log" 2>&1 &
      ;;
  esac
  nodes+=($!)
  ports+=("$port")
  admin_ports+=("$admin")
  wait_port "$port"
  if ! kill -0 "${nodes[-1]}" 2>/dev/null; then
    echo "$1 node $2 did not start:" >&2
    cat "$work/$run-node$2.log" >&2
    exit 1
  fi
}

# measure RUN KIND HERALD-BENCH-ARGS...: three nodes, the latency scenario, node 3's count.
measure() {
  run=$1
  local kind=$2
  shift 2
  ports=()
  admin_ports=()
  db="herald_${run//-/_}"
  rcli FLUSHALL >/dev/null
  [ "$kind" = herald ] && run_pg createdb -h 127.0.0.1 -p "$pg_port" -U postgres "$db"
  start_node "$kind" 1
  start_node "$kind" 2
  local before
  before=$(rcli PUBSUB CHANNELS | sort)
  start_node "$kind" 3
  local sub=""
  if [ "$kind" = socketioxide ]; then
    local chans
    mapfile -t chans < <(comm -13 <(echo "$before") <(rcli PUBSUB CHANNELS | sort))
    chans+=("socket.io-request#/#")
    echo "[$run] node 3 subscribes to: ${chans[*]} (subscribers of the shared channel: $(rcli PUBSUB NUMSUB 'socket.io-request#/#' | tail -1))"
    redis-cli -p "$redis_port" --csv SUBSCRIBE "${chans[@]}" >"$work/$run-sub.csv" &
    sub=$!
  fi
  local -a cpu0 cpu1
  cpu0=($(ticks "${nodes[0]}") $(ticks "${nodes[1]}") $(ticks "${nodes[2]}") $(ticks "${pids[0]}")
    $(pg_ticks) $(ticks $$ all) $(machine))
  timeout --signal=INT --kill-after=10 300 "$bench" suite --target "127.0.0.1:${ports[0]}" \
    --api-target "127.0.0.1:${ports[1]}" --server-pid "${nodes[2]}" --label "$run" "$@" \
    --http-connections 64 --scenarios latency --rates "$rate" --rate-secs "$secs" \
    --sources 127.0.0.1,127.0.0.2 --out "$work/results.jsonl" >/dev/null ||
    echo "[$run] herald-bench failed" >&2
  cpu1=($(ticks "${nodes[0]}") $(ticks "${nodes[1]}") $(ticks "${nodes[2]}") $(ticks "${pids[0]}")
    $(pg_ticks) $(ticks $$ all) $(machine))
  local d=() i
  for i in 0 1 2 3 4 5; do d+=("$(awk -v t=$((cpu1[i] - cpu0[i])) 'BEGIN {printf "%.2f", t / 100}')"); done
  echo "[$run] CPU s over the whole bench run (connects included): node 1 ${d[0]}, node 2 ${d[1]}," \
    "node 3 ${d[2]}, redis ${d[3]}, postgres ${d[4]}, load generator ${d[5]};" \
    "machine busy $(( (cpu1[6] - cpu0[6]) * 100 / (cpu1[7] - cpu0[7]) ))% of $(nproc) cores"
  if [ "$kind" = herald ]; then
    sleep 1
    echo "[$run] node 1 deliveries after the run (herald_deliveries_total):" \
      "$(curl -s "127.0.0.1:${admin_ports[0]}/metrics" | awk '$1 == "herald_deliveries_total" {print $2}')"
  fi
  local received
  if [ -n "$sub" ]; then
    sleep 0.5
    kill "$sub"
    wait "$sub" 2>/dev/null || true
    received=$(grep -c '^"message",' "$work/$run-sub.csv" || true)
  else
    received=$(curl -s "127.0.0.1:${admin_ports[2]}/metrics" | awk '$1 == "herald_redis_received_total" {print $2}')
  fi
  echo "$run $received" >>"$work/node3.txt"
  stop_nodes
  for n in 1 2 3; do
    local logged
    logged=$(grep -v -e '^listening on' -e '^admin listener on' "$work/$run-node$n.log" || true)
    if [ -n "$logged" ]; then
      echo "[$run] node $n logged $(wc -l <<<"$logged") lines; the first: $(head -1 <<<"$logged" | cut -c1-300)"
    fi
  done
}

measure herald-volatile herald --api herald
measure herald-durable herald --api herald --durable --ack
measure socketioxide-redis socketioxide --api peer

echo
echo "3 nodes, $rate unicast pushes/s for ${secs}s entering node 2, 10,000 receivers on node 1"
python3 - "$work/results.jsonl" "$work/node3.txt" <<'EOF'
import json, sys
received = dict(l.split() for l in open(sys.argv[2]))
print("| server | achieved/s | p50 ms | p99 ms | lost | node 3 CPU ms | node 3 µs/push | node 3 messages |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] != "latency":
        continue
    l = r["latency_us"] or {}
    cpu_ms = r["cpu_s"] * 1000
    per = cpu_ms * 1000 / max(r["http_ok"], 1)
    print(f'| {r["server"]} | {r["achieved_per_s"]:.0f} | {l.get("p50", 0) / 1000:.2f} | '
          f'{l.get("p99", 0) / 1000:.2f} | {r["missing"]} | {cpu_ms:.0f} | {per:.2f} | '
          f'{received[r["server"]]} |')
EOF
echo
echo "raw results (cpu_s, rss_kib and idle_cpu_percent are node 3's):"
cat "$work/results.jsonl"
