#!/usr/bin/env bash
# Browser checks in headless Chromium (playwright-core):
# 1. /demo/ and /v1/client.js: starts a 2-node cluster, opens the demo page of node 2,
#    publishes with curl through node 1 and checks the page shows it;
# 2. the admin UI (ui.mjs): a 3-node cluster with access control on, logged in with the
#    bootstrap token; screenshots of every page go to $STACKD_UI_SHOTS (default: a temporary
#    folder; docs/ui/ holds the committed ones);
# 3. the overview of a 5-node cluster (overview5.mjs) shows a leadership transfer and a node
#    killed within 1 s of the API.
# Needs: chromium (apt-get install -y chromium), node and npm.
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
echo "demo: 1 passed, 0 failed"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# The admin UI: three nodes with access control on.
u1=$((p1 + 10))
shots="${STACKD_UI_SHOTS:-$work/shots}"
mkdir -p "$shots"
"$bin" serve --data-dir "$work/u1" --api-addr "$ip:$u1" --cluster-addr "$ip:$((u1 + 100))" \
  >"$work/u1.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/u1/join-token" ] && [ -s "$work/u1/bootstrap-token" ] && break; sleep 0.1; done
join="$(cat "$work/u1/join-token")"
admin="$(cat "$work/u1/bootstrap-token")"
bases="http://$ip:$u1"
for i in 2 3; do
  port=$((u1 + i - 1))
  "$bin" serve --data-dir "$work/u$i" --api-addr "$ip:$port" --cluster-addr "$ip:$((port + 100 + i))" \
    --join "$ip:$((u1 + 100))" --token "$join" >"$work/u$i.log" 2>&1 &
  pids+=($!)
  bases="$bases,http://$ip:$port"
done
for _ in $(seq 1 300); do
  n="$(curl -sf -H "authorization: Bearer $admin" "http://$ip:$u1/v1/cluster" \
    | grep -o '"role":"voter"' | wc -l)" || n=0
  [ "$n" -ge 3 ] && curl -sf "http://$ip:$((u1 + 2))/ready" >/dev/null && break
  sleep 0.2
done
[ "$n" -ge 3 ] || { echo "the UI cluster did not form"; tail -n 20 "$work"/u*.log; exit 1; }
node "$here/ui.mjs" "$admin" "$shots" "$bases" "$(IFS=,; echo "${pids[*]}")" || {
  tail -n 30 "$work"/u*.log
  exit 1
}
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# The overview of five nodes (five voters).
f1=$((p1 + 30))
"$bin" serve --data-dir "$work/f1" --api-addr "$ip:$f1" --cluster-addr "$ip:$((f1 + 101))" \
  --target-voters 5 >"$work/f1.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/f1/join-token" ] && [ -s "$work/f1/bootstrap-token" ] && break; sleep 0.1; done
join="$(cat "$work/f1/join-token")"
admin="$(cat "$work/f1/bootstrap-token")"
bases="http://$ip:$f1"
for i in 2 3 4 5; do
  port=$((f1 + i - 1))
  "$bin" serve --data-dir "$work/f$i" --api-addr "$ip:$port" --cluster-addr "$ip:$((port + 100 + i))" \
    --target-voters 5 --join "$ip:$((f1 + 101))" --token "$join" >"$work/f$i.log" 2>&1 &
  pids+=($!)
  bases="$bases,http://$ip:$port"
done
for _ in $(seq 1 450); do
  n="$(curl -sf -H "authorization: Bearer $admin" "http://$ip:$f1/v1/cluster" \
    | grep -o '"role":"voter"' | wc -l)" || n=0
  [ "$n" -ge 5 ] && break
  sleep 0.2
done
[ "$n" -ge 5 ] || { echo "the 5-node cluster did not form"; tail -n 20 "$work"/f*.log; exit 1; }
node "$here/overview5.mjs" "$admin" "$bases" "$(IFS=,; echo "${pids[*]}")" || {
  tail -n 30 "$work"/f*.log
  exit 1
}
