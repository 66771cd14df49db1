#!/usr/bin/env bash
# Drive the herald testbed with real Socket.IO clients:
#   - socket.io-client 4.x and 2.x (node --test)
#   - python-socketio 5.x (pytest)
#
# Usage:
#   cargo build --example testbed
#   HERALD_TESTBED=$PWD/target/debug/examples/testbed tests/clients/run.sh
#
# Optional environment:
#   HERALD_TEST_WAIT_MS   deadline for a single wait in the tests (default 5000)
#   HERALD_TEST_VERBOSE   set to 1 to pass the testbed's output through
set -euo pipefail

caller_pwd="$PWD"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

section() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# --- testbed ---------------------------------------------------------------
[[ -n "${HERALD_TESTBED:-}" ]] ||
  die "HERALD_TESTBED is not set (build it with 'cargo build --example testbed' and point it at target/debug/examples/testbed)"
# Resolve relative to the caller's directory, not ours.
case "$HERALD_TESTBED" in
  /*) ;;
  *) HERALD_TESTBED="$caller_pwd/$HERALD_TESTBED" ;;
esac
[[ -f "$HERALD_TESTBED" && -x "$HERALD_TESTBED" ]] ||
  die "HERALD_TESTBED=$HERALD_TESTBED is not an executable file"
export HERALD_TESTBED

command -v node >/dev/null || die "node is required"
command -v npm >/dev/null || die "npm is required"
command -v python3 >/dev/null || die "python3 is required"

# --- JS clients ------------------------------------------------------------
if [[ ! -d node_modules ]]; then
  section "installing JS clients"
  if [[ -f package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
fi

# --- Python client ---------------------------------------------------------
venv="$here/python/.venv"
stamp="$venv/.requirements.installed"
if [[ ! -x "$venv/bin/python" ]]; then
  section "creating python venv"
  python3 -m venv "$venv"
fi
if [[ ! -f "$stamp" ]] || ! cmp -s python/requirements.txt "$stamp"; then
  section "installing python clients"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r python/requirements.txt
  cp python/requirements.txt "$stamp"
fi

# --- run ---------------------------------------------------------------------
status=0

section "socket.io-client 4.x / 2.x (node --test)"
node --test --test-reporter=spec --test-concurrency=1 v4.test.js v2.test.js || status=1

section "python-socketio (pytest)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/test_client.py || status=1

if [[ $status -ne 0 ]]; then
  printf '\nclient tests: FAILED (see above)\n' >&2
fi
exit $status
