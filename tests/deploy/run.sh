#!/usr/bin/env bash
# Checks the deployment artifacts in deploy/:
# - the systemd unit, with `systemd-analyze verify` (any complaint fails: unknown keys
#   are only warnings to systemd), its ExecStart pointed at the binary under test;
# - the Kubernetes manifests, against the Kubernetes API's own schemas
#   (kubernetes-validate, from PyPI, in a venv of its own), plus the facts the drain
#   depends on (readiness on /readyz, a grace period covering the drain);
# - the Dockerfile, by building the image and running its health check, when a container
#   builder answers; when none does it says so, and that part is not checked.
#
#   HERALD_BIN=target/debug/herald tests/deploy/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(cd "$(dirname "${HERALD_BIN:?set HERALD_BIN to the herald binary}")" && pwd)/$(basename "$HERALD_BIN")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! command -v systemd-analyze >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  else
    echo "systemd-analyze is missing (Debian's systemd package)" >&2
    exit 1
  fi
fi
echo "== systemd unit"
sed "s|/usr/local/bin/herald|$bin|" deploy/systemd/herald.service >"$work/herald.service"
out=$(systemd-analyze verify "$work/herald.service" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "systemd-analyze verify complained:" >&2
  echo "$out" >&2
  exit 1
fi
echo "deploy/systemd/herald.service: ok"

echo "== Kubernetes manifests"
venv=tests/deploy/.venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.31 deploy/kubernetes/herald.yaml
"$venv/bin/python" - deploy/kubernetes/herald.yaml <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
assert {"Deployment", "Service", "PodDisruptionBudget"} <= docs.keys(), docs.keys()
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness must be /readyz"
env = {e["name"]: e.get("value") for e in c.get("env", [])}
grace = int(env.get("HERALD_SHUTDOWN_GRACE_SECS", 5))
drain = int(env.get("HERALD_SHUTDOWN_DRAIN_SECS", 10))
assert pod["terminationGracePeriodSeconds"] >= grace + 2 * drain, "the grace period must cover the drain"
print("deploy/kubernetes/herald.yaml: the readiness probe is /readyz; "
      f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} covers {grace} + 2 x {drain} s")
PY

echo "== container image"
if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
  tag=herald-test:$$
  docker build -q -f deploy/Dockerfile -t "$tag" . >/dev/null
  id=$(docker run -d "$tag")
  trap 'docker rm -f "$id" >/dev/null 2>&1; docker rmi "$tag" >/dev/null 2>&1; rm -rf "$work"' EXIT
  for _ in $(seq 60); do
    state=$(docker inspect -f '{{.State.Health.Status}}' "$id")
    [ "$state" = healthy ] && break
    sleep 1
  done
  [ "$state" = healthy ] || { docker logs "$id" >&2; echo "the container is $state" >&2; exit 1; }
  user=$(docker exec "$id" id -u)
  [ "$user" != 0 ] || { echo "the container runs as root" >&2; exit 1; }
  echo "deploy/Dockerfile: built; the container is healthy and runs as uid $user"
else
  echo "deploy/Dockerfile: not built: no container builder answers here (docker info fails)"
fi
