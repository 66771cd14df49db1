#!/usr/bin/env bash
# Two herald builds side by side on S1-S4 (idle RSS, one emit to 10k, bursts, unicast
# through HTTP, and durable unicast to 10k receivers that ack), each run twice,
# alternating, with the server on core 0 and the load on core 1: a before/after check of a
# change, within the noise between runs.
# Usage: bench/compare.sh OLD_HERALD NEW_HERALD [RUNS]   (herald-bench from target/release)
set -euo pipefail
# No drain when a server is stopped between runs.
export HERALD_SHUTDOWN_GRACE_SECS=0 HERALD_SHUTDOWN_DRAIN_SECS=0
# The load comes from a few loopback addresses: herald's per-address limits are off.
export HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP=0 HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC=0 \
  HERALD_TRANSPORT_MAX_SESSIONS_PER_IP=0 HERALD_LOG=error
cd "$(dirname "$0")/.."
old=$1 new=$2 runs=${3:-2}
bench_bin=${BENCH_BIN:-target/release/herald-bench}
ulimit -n 20000
work=$(mktemp -d /tmp/herald-compare.XXXXXX)
results=$work/results.jsonl
sources=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
server=""
trap '[ -n "$server" ] && kill $server 2>/dev/null; wait 2>/dev/null' EXIT

start() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/data-$port"
  taskset -c 0 "$1" --dev-auth --listen "127.0.0.1:$port" --data-dir "$work/data-$port" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
  echo "server $1 did not start" >&2
  exit 1
}

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
  sleep 0.5
}

run() {
  local label=$1 bin=$2
  start "$bin"
  timeout 600 taskset -c 1 "$bench_bin" idle-ramp --target "127.0.0.1:$port" --server-pid "$server" \
    --label "$label" --out "$results" --sources "$sources" --steps 19500 >/dev/null
  stop
  start "$bin"
  timeout 900 taskset -c 1 "$bench_bin" suite --target "127.0.0.1:$port" --server-pid "$server" \
    --label "$label" --out "$results" --api herald --sources "$sources" --connections 10000 \
    --scenarios fanout,burst,unicast --http-connections 64 --fanout-emits 20 --fanout-warmup 2 \
    --bursts 2 --burst-size 100 --unicast-rounds 3 --unicast-batch 1,100 >/dev/null
  stop
  start "$bin"
  timeout 900 taskset -c 1 "$bench_bin" suite --target "127.0.0.1:$port" --server-pid "$server" \
    --label "$label" --out "$results" --api herald --sources "$sources" --connections 10000 \
    --durable --ack --scenarios unicast --http-connections 64 --unicast-rounds 4 \
    --unicast-batch 1 >/dev/null
  stop
}

for r in $(seq "$runs"); do
  run "old-$r" "$old"
  run "new-$r" "$new"
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
durable = False
def fig(r):
    global durable
    s = r["scenario"]
    if s == "setup": durable = bool(r.get("durable"))
    if s == "idle": return "S1 idle bytes/conn", r["bytes_per_connection"]
    if s == "fanout": return "S2 fanout µs/delivery", r["cpu_us_per_delivery"]
    if s == "burst": return "S3 burst µs/delivery", r["cpu_us_per_delivery"]
    if s == "unicast":
        kind = "durable" if durable else "volatile"
        return f"S4 {kind} unicast batch {r.get('batch')} µs/push", r.get("cpu_us_per_push")
    return None, None
table = {}
for r in rows:
    name, v = fig(r)
    if name and v is not None:
        table.setdefault(name, {}).setdefault(r["server"], v)
labels = sorted({r["server"] for r in rows})
print("| figure | " + " | ".join(labels) + " |")
print("|---|" + "---|" * len(labels))
for name in sorted(table):
    print(f"| {name} | " + " | ".join(f"{table[name].get(l, float('nan')):.2f}" for l in labels) + " |")
EOF
echo "raw results: $results"
