#!/usr/bin/env bash
# Browser check of /demo/ and /v1/client.js: starts a 2-node cluster, opens the demo page of
# node 2 in headless Chromium (playwright-core), publishes with curl through node 1 and checks
# the page shows it. Needs: chromium (apt-get install -y chromium), node and npm.
#   STACKD_BIN=path/to/stackd tests/browser/run.sh [screenshot.png]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${STACKD_BIN:-${CARGO_TARGET_DIR:-$here/../../target}/debug/stackd}"
shot="${1:-$here/demo.png}"
ip="${STACKD_BROWSER_IP:-127.0.0.1}"
p1="${STACKD_BROWSER_PORT:-17801}"
p2=$((p1 + 1))
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm install --no-audit --no-fund --silent)
fi

# Cluster ports: p1+100 and p2+101, so that neither is the other node's gossip port (cluster
# port + 1).
"$bin" serve --insecure-no-auth --data-dir "$work/n1" --api-addr "$ip:$p1" --cluster-addr "$ip:$((p1 + 100))" \
  >"$work/n1.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/n1/join-token" ] && break; sleep 0.1; done
token="$(cat "$work/n1/join-token")"
"$bin" serve --insecure-no-auth --data-dir "$work/n2" --api-addr "$ip:$p2" --cluster-addr "$ip:$((p2 + 101))" \
  --join "$ip:$((p1 + 100))" --token "$token" >"$work/n2.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do curl -sf "http://$ip:$p2/ready" >/dev/null && break; sleep 0.2; done
curl -sf "http://$ip:$p2/ready" >/dev/null || { tail -20 "$work"/n*.log; exit 1; }

node "$here/demo.mjs" "http://$ip:$p2" "http://$ip:$p1" "$shot"
echo "1 passed, 0 failed"
