#!/usr/bin/env bash
# Side-by-side benchmark of herald, socket.io 4.8 (Node) and socketioxide 0.18, each
# behind the same push endpoint, driven by herald-bench. Writes docs/benchmarks.md and
# its charts (docs/benchmarks/*.png, plus the raw results.jsonl).
#
# Usage:
#   bench/run.sh                 full run (about 16 minutes once everything is built)
#   bench/run.sh --quick         small counts, about 2.5 minutes; writes to bench/out/quick/
#   options:
#     --servers herald,socketioxide,socketio   which servers (default: all three)
#     --churn-secs N     measured seconds of connection churn for herald (S6)
#     --peer-churn-secs N  the same for the peers
#     --out DIR          where the report goes (default: docs/ for a full run)
#     --herald-rev REV   build herald from a git revision (e.g. HEAD) instead of the
#                        working tree
#     --no-build         use the binaries already built
#     --nice N           run servers and load generator at this niceness (e.g. -10,
#                        as root) so that other jobs on the machine disturb them less
#
# Needs: cargo, node + npm, python3 (for the charts, in bench/.venv), taskset. The
# server runs on core 0 and the load generator on core 1. CARGO_TARGET_DIR is honoured.
# HERALD_BIN runs a prebuilt herald instead of building the working tree.
set -euo pipefail
# No drain when a server is stopped between runs.
export HERALD_SHUTDOWN_GRACE_SECS=0 HERALD_SHUTDOWN_DRAIN_SECS=0
# The load comes from a few loopback addresses: herald's per-address limits are off.
export HERALD_TRANSPORT_MAX_CONNECTIONS_PER_IP=0 HERALD_TRANSPORT_MAX_HANDSHAKES_PER_IP_PER_SEC=0 \
  HERALD_TRANSPORT_MAX_SESSIONS_PER_IP=0

# Everything is in a function so that bash reads the whole script before running it:
# editing this file during a run cannot change the run.
main() {
cd "$(dirname "$0")/.."
root=$PWD
started=$(date +%s)

quick=0
servers="herald,socketioxide,socketio"
churn_secs=""
peer_churn_secs=""
out=""
build=1
herald_rev=""
prio=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --servers) servers=$2; shift ;;
    --churn-secs) churn_secs=$2; shift ;;
    --peer-churn-secs) peer_churn_secs=$2; shift ;;
    --out) out=$2; shift ;;
    --herald-rev) herald_rev=$2; shift ;;
    --no-build) build=0 ;;
    --nice) prio=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$quick" = 1 ]; then
  mode=quick
  idle_steps=500,2000
  conns=2000
  suite_args=(--http-connections 64 --fanout-emits 5 --fanout-warmup 1 --bursts 1 --burst-size 20
    --unicast-rounds 1 --unicast-batch 1,100 --rates 1000,5000 --rate-secs 3 --drain-secs 3)
  churn_secs=${churn_secs:-10}
  peer_churn_secs=${peer_churn_secs:-$churn_secs}
  out=${out:-bench/out/quick}
else
  mode=full
  idle_steps=1000,10000,19500
  conns=10000
  suite_args=(--http-connections 64 --fanout-emits 20 --fanout-warmup 2 --bursts 2 --burst-size 100
    --unicast-rounds 3 --unicast-batch 1,100 --rates 1000,10000,50000 --rate-secs 10 --drain-secs 5)
  # The 20-minute budget of a full run leaves five minutes of churn for herald (the
  # RSS drift question is about herald) and two minutes for each peer.
  churn_secs=${churn_secs:-300}
  peer_churn_secs=${peer_churn_secs:-120}
  out=${out:-docs}
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d /tmp/herald-bench.XXXXXX)
results=$work/results.jsonl
: >"$results"
log() { echo "[$(date +%T)] $*" >&2; }

server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

# --- Build and install -----------------------------------------------------------------

herald_bin=${HERALD_BIN:-$target_dir/release/herald}
bench_bin=$target_dir/release/herald-bench
peer_bin=$target_dir/release/socketioxide-peer
herald_commit=$(git rev-parse --short HEAD)
[ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ] &&
  herald_commit="$herald_commit with uncommitted changes"
cargo_build() { CARGO_TARGET_DIR=$target_dir nice -n 10 cargo build --release -q "$@"; }
if [ "$build" = 1 ]; then
  log "building herald-bench and the socketioxide peer (release)"
  cargo_build -p herald-bench
  cargo_build --manifest-path bench/peers/socketioxide/Cargo.toml
  if [ -n "$herald_rev" ]; then
    log "building herald at $herald_rev (release)"
    mkdir -p "$work/herald-src"
    git archive "$herald_rev" | tar -x -C "$work/herald-src"
    # git archive stamps files with the commit's time, which can be older than the last
    # build in this target directory: make cargo see them as new.
    find "$work/herald-src" -type f -exec touch {} +
    (cd "$work/herald-src" && cargo_build -p herald)
    cp "$target_dir/release/herald" "$work/herald"
    herald_bin=$work/herald
    herald_commit=$(git rev-parse --short "$herald_rev")
  elif [ -z "${HERALD_BIN:-}" ]; then
    log "building herald (release)"
    cargo_build -p herald
  fi
fi
if [ ! -d bench/peers/socketio/node_modules ] ||
  [ bench/peers/socketio/package-lock.json -nt bench/peers/socketio/node_modules ]; then
  log "installing the socket.io peer (npm ci)"
  (cd bench/peers/socketio && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch bench/peers/socketio/node_modules
fi
if ! bench/.venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib into bench/.venv"
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --disable-pip-version-check 'matplotlib>=3.7,<4'
fi

# --- Machine limits ----------------------------------------------------------------------

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 19600 ] && [ "$mode" = full ]; then
  echo "need 19,600 open files per process, have $(ulimit -n)" >&2
  exit 1
fi
sources=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
if [ "$(nproc)" -ge 2 ]; then
  server_cpu=0
  load_cpu=1
else
  server_cpu=0
  load_cpu=0
fi

# --- Servers -----------------------------------------------------------------------------

source bench/services.sh

# start_server NAME: starts it on core $server_cpu, sets server_pid and port.
start_server() {
  local name=$1
  port=$(free_port)
  local logf=$work/$name-$port.log
  case "$name" in
    herald)
      local data=$work/herald-data-$port
      mkdir -p "$data"
      nice -n "$prio" taskset -c "$server_cpu" "$herald_bin" --dev-auth --listen "127.0.0.1:$port" \
        --data-dir "$data" >"$logf" 2>&1 &
      ;;
    socketioxide)
      PORT=$port nice -n "$prio" taskset -c "$server_cpu" "$peer_bin" >"$logf" 2>&1 &
      ;;
    socketio)
      PORT=$port nice -n "$prio" taskset -c "$server_cpu" node bench/peers/socketio/server.js >"$logf" 2>&1 &
      ;;
  esac
  server_pid=$!
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "$name did not start:" >&2
  cat "$logf" >&2
  exit 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  sleep 0.5
}

api_of() { [ "$1" = herald ] && echo herald || echo peer; }

# bench LABEL ARGS...: runs herald-bench on core $load_cpu, bounded in time.
bench() {
  local label=$1
  shift
  local cmd=$1
  shift
  if ! timeout --signal=INT --kill-after=10 900 nice -n "$prio" taskset -c "$load_cpu" "$bench_bin" "$cmd" \
    --target "127.0.0.1:$port" --server-pid "$server_pid" --label "$label" \
    --out "$results" "$@" >/dev/null; then
    log "$label: herald-bench $cmd failed"
    printf '{"scenario":"error","server":"%s","command":"%s"}\n' "$label" "$cmd" >>"$results"
  fi
}

uptime_before=$(cut -d' ' -f1-3 /proc/loadavg)
IFS=, read -r -a server_list <<<"$servers"

# The kernel's cost of one small loopback write on the server's core, before and after:
# the floor under every per-delivery figure, and a gauge of how busy the machine was.
# It grows with the number of sockets written to (their kernel state falls out of the
# caches), so it is taken over as many connections as the room has (at most 9,500: each
# takes two descriptors here).
floor() {
  nice -n "$prio" taskset -c "$server_cpu" "$bench_bin" floor --connections $((conns < 9500 ? conns : 9500)) --rounds 20 \
    --label "kernel-$1" --out "$results" >/dev/null
  # And S6's: a bare TCP accept, read to the end, close.
  nice -n "$prio" taskset -c "$server_cpu" "$bench_bin" accept-floor --connections 10000 \
    --label "kernel-$1" --out "$results" >/dev/null
}
floor before

for s in "${server_list[@]}"; do
  log "$s: S1 idle RSS at $idle_steps"
  start_server "$s"
  bench "$s" idle-ramp --sources "$sources" --steps "$idle_steps"
  stop_server

  log "$s: S2-S5 with $conns receivers"
  start_server "$s"
  bench "$s" suite --api "$(api_of "$s")" --sources "$sources" --connections "$conns" \
    "${suite_args[@]}"
  stop_server

  if [ "$s" = herald ]; then
    log "herald: S4-S5 durable (SQLite store in a temporary directory)"
    start_server herald
    bench herald-durable suite --api herald --durable --ack --sources "$sources" \
      --connections "$conns" --scenarios unicast,latency "${suite_args[@]}"
    stop_server
  fi

  secs=$churn_secs
  [ "$s" = herald ] || secs=$peer_churn_secs
  log "$s: S6 churn for ${secs}s"
  start_server "$s"
  bench "$s" churn --sources "$sources" --secs "$secs" --user-prefix c --users 10000 \
    --sample-secs "$((secs >= 60 ? 10 : 2))"
  stop_server
done
floor after
uptime_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report ------------------------------------------------------------------------------

finished=$(date +%s)
meta=$work/meta.json
python3 - "$meta" <<EOF
import json, os, platform, re, subprocess, sys
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", \$2/1048576}' /proc/meminfo")
lock = open("bench/peers/socketioxide/Cargo.lock").read()
m = re.search(r'name = "socketioxide"\nversion = "([^"]+)"', lock)
meta = {
    "mode": "$mode",
    "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    "nproc": os.cpu_count(),
    "cpu": cpu,
    "kernel": platform.release(),
    "memory": mem,
    "herald_commit": "$herald_commit",
    "herald_bin": "${HERALD_BIN:-}",
    "node": sh("node --version"),
    "socketio": sh("node -p \"require('./bench/peers/socketio/node_modules/socket.io/package.json').version\""),
    "ws": sh("node -p \"require('./bench/peers/socketio/node_modules/ws/package.json').version\""),
    "socketioxide": m.group(1) if m else "?",
    "rustc": sh("rustc --version"),
    "load_before": "$uptime_before",
    "load_after": "$uptime_after",
    "seconds": $finished - $started,
    "server_cpu": $server_cpu,
    "nice": $prio,
    "load_cpu": $load_cpu,
    "connections": $conns,
    "idle_steps": "$idle_steps",
    "churn_secs": "$churn_secs",
    "peer_churn_secs": "$peer_churn_secs",
    "suite_args": "${suite_args[*]}",
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
mkdir -p "$out/benchmarks"
cp "$results" "$out/benchmarks/results.jsonl"
cp "$meta" "$out/benchmarks/meta.json"
bench/.venv/bin/python bench/report.py --results "$out/benchmarks/results.jsonl" \
  --meta "$out/benchmarks/meta.json" --out "$out/benchmarks.md" --charts "$out/benchmarks"
log "done in $((finished - started))s: $out/benchmarks.md"
rm -rf "$work"
}

main "$@"
