# Helpers shared by the bench scripts: free ports, and a Redis and a PostgreSQL of their
# own, started in the calling script's temporary directory `$work` on free local ports.
# Source it after setting `work`; call `stop_pg` from the script's clean-up.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (at most 10 s).
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done
}

pgbin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
# run_pg TOOL ARGS...: a PostgreSQL tool, as the postgres user when run as root.
run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pgbin/$1" "${@:2}"; else "$pgbin/$1" "${@:2}"; fi
}

# start_redis: a redis-server keeping nothing on disk; sets redis_port and redis_pid.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  redis_pid=$!
  wait_port "$redis_port"
}

# start_pg: a PostgreSQL cluster in $work/pg (fsync on); sets pg_port.
start_pg() {
  mkdir -p "$work/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres "$work" "$work/pg"; fi
  pg_port=$(free_port)
  run_pg initdb -D "$work/pg" -A trust -U postgres >/dev/null
  run_pg pg_ctl -D "$work/pg" -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1" \
    -l "$work/pg.log" -w start >/dev/null
}

stop_pg() {
  if [ -f "$work/pg/postmaster.pid" ]; then
    run_pg pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  fi
}
