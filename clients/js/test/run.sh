#!/usr/bin/env bash
# The JavaScript client's tests: unit tests, type checks, and the client against the
# herald binary in Node and in headless Chromium.
#
#   HERALD_BIN=target/debug/herald clients/js/test/run.sh [test files, relative to clients/js]
#
# Installs what is missing: the npm packages (npm ci) and Debian's chromium. Builds the
# CommonJS entry and the browser bundle first. Optional: HERALD_E2E_VERBOSE=1 echoes the
# server's output, HERALD_E2E_LOG=debug sets its log level, HERALD_CLIENT_WAIT_MS
# changes the deadline of single waits (default 10000), HERALD_CLIENT_DEBUG_NET=1 prints
# the browser's failed and non-200 requests.
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

cd "$(dirname "$0")/.."

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
  echo "== npm ci (clients/js)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "== build"
node build.mjs

echo "== type check"
npx --no-install tsc -p test/types/tsconfig.json

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  files=(test/unit.test.js test/herald.test.js test/browser.test.js)
fi

echo "== client tests against $HERALD_BIN"
exec node --test --test-concurrency=1 "${files[@]}"
