#!/usr/bin/env bash
# The cost of access control on one node, free of the placement and drift that make two
# clusters side by side (compare.sh) differ by more than the checks cost.
#
# Starts one stackd node (release build) on one data dir and restarts it with access control on
# and off in turn, in the order on-off, off-on, on-off, ... (so a slow drift of this shared
# machine favours neither), driving the same loadgen rows each time (64 connections, the
# management token when on; rate limits out of reach). Prints each phase and, per row, the mean
# ops/s of each side over all rounds and the cost (how much fewer ops/s with access control on).
#
# Usage: benches/auth-cost.sh [ROWS...]        (default: stale-get get put)
# Environment: ROUNDS [4] (even keeps the order balanced)  DURATION [5]  WARMUP [1]
#              PORT [7401] (API; the cluster port is PORT+100)  WORK [mktemp -d]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
ROUNDS="${ROUNDS:-4}" DURATION="${DURATION:-5}" WARMUP="${WARMUP:-1}" PORT="${PORT:-7401}"
WORK="${WORK:-$(mktemp -d)}"
ROWS=("${@:-stale-get get put}")
read -r -a ROWS <<<"${ROWS[*]}"
BIN="$CARGO_TARGET_DIR/release"
export STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 \
    STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000
API="http://127.0.0.1:$PORT"
PID=""
log() { echo "auth-cost: $*" >&2; }
stop() {
    [[ -n "$PID" ]] || return 0
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}
trap 'stop; rm -rf "$WORK"' EXIT
start() {
    "$BIN/stackd" serve --data-dir "$WORK/data" --api-addr "127.0.0.1:$PORT" \
        --cluster-addr "127.0.0.1:$((PORT + 100))" "$@" >>"$WORK/stackd.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 200); do curl -sf "$API/ready" >/dev/null && return 0; sleep 0.1; done
    tail -20 "$WORK/stackd.log" >&2
    return 1
}
ops() { # WORKLOAD [--token T]
    "$BIN/loadgen" --targets "$API" --workload "$1" --connections 64 --duration-secs "$DURATION" \
        --warmup-secs "$WARMUP" --keys 1000 --json "${@:2}" 2>/dev/null |
        python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["ops_per_sec"])'
}

log "building stackd and loadgen (release)"
cargo build --release -p node -p benches >&2
start
TOKEN="$(cat "$WORK/data/bootstrap-token")"
stop
RESULTS="$WORK/results"
: >"$RESULTS"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=(on off); else order=(off on); fi
    for side in "${order[@]}"; do
        if [[ "$side" == on ]]; then start; auth=(--token "$TOKEN"); else start --insecure-no-auth; auth=(); fi
        for row in "${ROWS[@]}"; do
            n="$(ops "$row" "${auth[@]}")"
            log "round $round, access control $side, $row: $n ops/s"
            echo "$row $side $n" >>"$RESULTS"
        done
        stop
    done
done
python3 - "$RESULTS" "$ROUNDS" <<'PY'
import sys, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    row, side, n = line.split()
    rows.setdefault(row, {"on": [], "off": []})[side].append(float(n))
print(f"one node, 64 connections, mean of {sys.argv[2]} rounds per side (order on-off, off-on, ...)")
print(f"{'row':<12}{'auth on ops/s':>16}{'auth off ops/s':>16}{'cost':>9}")
for row, s in rows.items():
    on, off = sum(s["on"]) / len(s["on"]), sum(s["off"]) / len(s["off"])
    print(f"{row:<12}{on:>16,.0f}{off:>16,.0f}{(off - on) / off * 100:>+8.1f}%")
PY
