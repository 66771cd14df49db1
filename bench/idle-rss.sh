#!/usr/bin/env bash
# Idle RSS per WebSocket connection: (RSS with N connections - RSS with 0) / N, for the
# herald binary, at 1k, 10k and 19.5k Socket.IO connections held by herald-bench.
# Usage: bench/idle-rss.sh [counts...]   (default: 1000 10000 19500)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-1000 10000 19500}")
[ $# -eq 0 ] && counts=(1000 10000 19500)
cargo build --release -q -p herald -p herald-bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ulimit -n 20000
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "| connections | server RSS before (KiB) | after (KiB) | per connection (bytes) |"
echo "|---|---|---|---|"
for n in "${counts[@]}"; do
  ./target/release/herald --dev-auth --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  server=$!
  # Wait for the port.
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  # Pin server and load to different cores when there are two.
  taskset -pc 0 "$server" >/dev/null 2>&1 || true
  before=$(rss "$server")
  sources=127.0.0.1,127.0.0.2,127.0.0.3
  taskset -c 1 ./target/release/herald-bench idle --target "127.0.0.1:$port" --connections "$n" \
    --sources "$sources" --hold-secs 600 --user-prefix u >/tmp/herald-idle.out 2>&1 &
  bench=$!
  until grep -q connected /tmp/herald-idle.out 2>/dev/null; do
    kill -0 "$bench" 2>/dev/null || { cat /tmp/herald-idle.out; exit 1; }
    sleep 0.2
  done
  sleep 2
  after=$(rss "$server")
  per=$(( (after - before) * 1024 / n ))
  echo "| $n | $before | $after | $per |   <!-- $(cat /tmp/herald-idle.out) -->"
  kill "$bench" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
done
