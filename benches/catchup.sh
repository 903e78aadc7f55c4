#!/usr/bin/env bash
# Snapshot catch-up: how long a node that joins an existing cluster takes to hold all its data
# when the log behind the last snapshot has been purged (so it must install the snapshot).
#
# Starts a local 3-node release cluster on 127.0.0.1-3, fills it with loadgen PUTs for
# FILL_SECS over KEYS keys of VALUE_SIZE bytes, takes a snapshot, then starts a 4th node on
# 127.0.0.4 with --join and times it from start until it has applied the leader's commit
# index. Prints keys, snapshot size, the catch-up time and the new node's peak memory.
#
# Usage: benches/catchup.sh   Env: KEYS (100000), VALUE_SIZE (1000), FILL_SECS (30), STACKD_DATA,
#   STACKD_BIN (another stackd build to measure; loadgen is this checkout's release build)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
export STACKD_DATA="${STACKD_DATA:-$(mktemp -d)/catchup-cluster}"
KEYS="${KEYS:-100000}"
VALUE_SIZE="${VALUE_SIZE:-1000}"
FILL_SECS="${FILL_SECS:-30}"

if [[ -z "${STACKD_BIN:-}" ]]; then
  cargo build --release -p node -p benches
  export STACKD_BIN="$CARGO_TARGET_DIR/release/stackd"
fi
# Access control off and rate limits out of reach: this measures the server, not the
# access check (compare.sh measures that separately).
export STACKD_INSECURE_NO_AUTH=true STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 \
  STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000
JOINER_PID=""
cleanup() {
  [[ -n "$JOINER_PID" ]] && kill "$JOINER_PID" 2>/dev/null || true
  deploy/local-cluster.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
deploy/local-cluster.sh start >/dev/null
TARGETS=http://127.0.0.1:7001,http://127.0.0.2:7001,http://127.0.0.3:7001

echo "filling: ${FILL_SECS}s of PUTs over ${KEYS} keys of ${VALUE_SIZE} bytes" >&2
"$CARGO_TARGET_DIR/release/loadgen" --targets "$TARGETS" --connections 64 \
  --duration-secs "$FILL_SECS" --warmup-secs 0 --workload put --keys "$KEYS" \
  --value-size "$VALUE_SIZE" --json >/dev/null

field() { curl -fsS "$1/v1/cluster" | python3 -c "import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print('' if v is None else v)" "$2"; }
curl -fsS -X POST http://127.0.0.1:7001/v1/cluster/snapshot >/dev/null
LEADER_ID=$(field http://127.0.0.1:7001 leader_id)
LEADER=$(curl -fsS http://127.0.0.1:7001/v1/cluster | python3 -c "
import json,sys; c=json.load(sys.stdin)
print(next(m['api_addr'] for m in c['members'] if m['id']==c['leader_id']))")
TARGET=$(field "http://$LEADER" commit_index)
PURGED=$(field "http://$LEADER" purged_index)
SNAP_BYTES=$(stat -c %s "$(ls "$STACKD_DATA"/node*/snapshots/snapshot.bin | head -1)")

KEYS_HELD=$(python3 - "http://$LEADER" <<'PY'
import json, sys, urllib.parse, urllib.request
base, after, n = sys.argv[1], None, 0
while True:
    url = f"{base}/v1/kv?limit=1000&consistency=stale"
    if after:
        url += "&after=" + urllib.parse.quote(after, safe="")
    page = json.load(urllib.request.urlopen(url))
    n += len(page["items"])
    after = page["next"]
    if not after:
        print(n)
        break
PY
)

TOKEN=$(cat "$STACKD_DATA/node1/join-token")
START=$(date +%s.%N)
"$STACKD_BIN" serve --data-dir "$STACKD_DATA/node4" --api-addr 127.0.0.4:7001 \
  --cluster-addr 127.0.0.4:7101 --join 127.0.0.1:7101 --token "$TOKEN" \
  >"$STACKD_DATA/node4.log" 2>&1 &
JOINER_PID=$!
for _ in $(seq 1 1200); do
  applied=$(field http://127.0.0.4:7001 applied_index 2>/dev/null || echo 0)
  if [[ -n "$applied" && "$applied" -ge "$TARGET" ]]; then break; fi
  sleep 0.1
done
END=$(date +%s.%N)
grep -q "snapshot installed" "$STACKD_DATA/node4.log" && HOW=snapshot || HOW=log
PEAK_MIB=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$JOINER_PID/status")
python3 - "$START" "$END" "$SNAP_BYTES" "$TARGET" "$PURGED" "$HOW" "$LEADER_ID" "$KEYS_HELD" "$VALUE_SIZE" "$PEAK_MIB" <<'PY'
import sys
start, end, snap, target, purged, how, leader, keys, vsize, peak = sys.argv[1:]
secs = float(end) - float(start)
mib = int(snap) / 1048576
print(f"leader {leader}: {keys} keys of {vsize} bytes, commit index {target}, log purged to {purged}, snapshot {mib:.1f} MiB (includes key-value history)")
print(f"new node caught up via {how} in {secs:.2f} s ({mib / secs:.1f} MiB/s, from process start), peak RSS {peak} MiB")
PY
