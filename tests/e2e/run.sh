#!/usr/bin/env bash
# End-to-end tests: the herald binary driven by socket.io-client 4.x and 2.3.0
# and by the demo page in headless Chromium.
#
#   HERALD_BIN=target/debug/herald tests/e2e/run.sh [test files...]
#
# Installs what is missing: the npm packages (npm ci) and Debian's chromium.
# Optional: HERALD_E2E_VERBOSE=1 echoes the server's output,
# HERALD_E2E_LOG=debug sets its log level, HERALD_E2E_WAIT_MS changes the
# deadline of single waits (default 5000).
set -euo pipefail

if [[ -z "${HERALD_BIN:-}" ]]; then
  echo "run.sh: HERALD_BIN is not set; point it at the herald binary (e.g. target/debug/herald)" >&2
  exit 2
fi
# Resolve before changing directory so that a relative path keeps working.
HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
if [[ ! -x "$HERALD_BIN" ]]; then
  echo "run.sh: HERALD_BIN=$HERALD_BIN is not an executable file" >&2
  exit 2
fi
export HERALD_BIN

cd "$(dirname "$0")"

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if [[ ! -x /usr/bin/chromium && -z "${HERALD_E2E_CHROMIUM:-}" ]]; then
  echo "== installing chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# npm ci when node_modules is missing or older than the lockfile.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  files=(push.test.js inbox.test.js demo.test.js seed.test.js admin.test.js)
fi

echo "== e2e tests against $HERALD_BIN"
exec node --test --test-concurrency=1 "${files[@]}"
