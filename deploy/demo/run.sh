#!/usr/bin/env bash
# `make run`: the local DotDigital sandbox, ddsync, and a demo stream, against the Kafka broker
# named by KAFKA_BOOTSTRAP_SERVERS (localkafka.py run starts one when none is given).
# Ctrl-C stops all of it, in order, and leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
work=.ddsync/demo
mkdir -p "$work"
rm -f "$work/sandbox.json"

sandbox_pid=""
ddsync_pid=""
stop() {
  # ddsync first: its shutdown flushes to the sandbox and commits to the broker.
  local pid
  for pid in $ddsync_pid $sandbox_pid; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  # A second Ctrl-C (or the broker launcher passing the first one on) must not cut this short.
  trap '' INT TERM
  trap - EXIT
  # If our output was piped (make run | tee), Ctrl-C took the reader too: ignore SIGPIPE, or
  # the first echo would end this script before it stopped anything.
  trap '' PIPE
  echo "[demo] stopping ddsync, then the sandbox" || true
  stop
}
trap cleanup EXIT INT TERM

# Own sessions: Ctrl-C in the terminal reaches only this script and the demo, and the
# cleanup above stops these two in the right order.
setsid "$PY" -m stream sandbox --port 0 --ready-file "$work/sandbox.json" --import-delay 0.5 &
sandbox_pid=$!
for _ in $(seq 100); do [ -s "$work/sandbox.json" ] && break; sleep 0.1; done
discovery=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["discovery_url"])' \
  "$work/sandbox.json")

export DDSYNC_DEMO_PASSWORD=demo-password
export DDSYNC__KAFKA__BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS"
export DDSYNC__CONNECTORS__EU_DEMO__DISCOVERY_ENDPOINT="$discovery"
export DDSYNC__CONNECTORS__US_DEMO__DISCOVERY_ENDPOINT="$discovery"
config=deploy/demo/ddsync.toml

# Topics and address books first, so that ddsync finds them when it starts.
"$PY" -m stream demo --config "$config" --setup-only
setsid "$PY" -m stream run --config "$config" &
ddsync_pid=$!
echo "[demo] ddsync runs; metrics on http://127.0.0.1:9464/metrics. Ctrl-C stops everything."
"$PY" -m stream demo --config "$config" || true
