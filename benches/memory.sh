#!/usr/bin/env bash
# A node's memory against the data it holds: a 3-node cluster takes writes, then each node's
# resident memory (now and at its peak), its data dir and its snapshots are reported.
#
# Usage: benches/memory.sh
#
# Two loads:
# - By default, puts for DURATION seconds over KEYS keys (few keys, large values: the history
#   and the log grow while the live data stays small), then the leader builds a snapshot
#   (`POST /v1/cluster/snapshot`).
# - With DATA_MB set, live data: DATA_MB MB of distinct keys, each with a VALUE_SIZE value,
#   are written (loadgen's preload, over every node), then read back at random from every node
#   for DURATION seconds. Automatic snapshots are off unless SNAPSHOT=1 (each would be a file
#   of DATA_MB on every node); the log stays in RocksDB. loadgen's values are a repeated
#   alphabet, which RocksDB's LZ4 compresses, so the disk holds far less than DATA_MB. The
#   storage quota is raised to twice DATA_MB.
#
# The cluster runs with access control off and rate limits out of reach, on 127.0.0.1-3
# (deploy/local-cluster.sh). The peak (VmHWM) shows what a snapshot build or a burst held,
# which the resident figure at the end may no longer show.
#
# Environment (defaults in brackets):
#   DURATION [30]  seconds of puts (or of reads, with DATA_MB)  CONNECTIONS [4, 32 with DATA_MB]
#   KEYS [10]  VALUE_SIZE [1000000]  (with DATA_MB: VALUE_SIZE [10000], KEYS from DATA_MB)
#   DATA_MB  live data to write instead of the put load           SNAPSHOT [1, or 0 with DATA_MB]
#   STACKD_BIN, LOADGEN  binaries [the release builds of this checkout, built if missing]
#   WORK  scratch dir [mktemp -d]; KEEP=1 keeps it
#   API_PORT [7731]  CLUSTER_PORT [7831]
#   Any STACKD_* setting is passed on to the nodes (say STACKD_SNAPSHOT_EVERY_LOG_BYTES).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "$0"; exit 2 ;;
esac
DURATION="${DURATION:-30}" DATA_MB="${DATA_MB:-}"
if [[ -n "$DATA_MB" ]]; then
    CONNECTIONS="${CONNECTIONS:-32}"
    VALUE_SIZE="${VALUE_SIZE:-10000}"
    KEYS=$((DATA_MB * 1000000 / VALUE_SIZE))
    SNAPSHOT="${SNAPSHOT:-0}"
    # The storage quota (2 GiB by default) at twice the data, so that it does not refuse it.
    export STACKD_QUOTA_BYTES="${STACKD_QUOTA_BYTES:-$((DATA_MB * 2000000))}"
    if [[ "$SNAPSHOT" == 0 ]]; then
        export STACKD_SNAPSHOT_EVERY_ENTRIES="${STACKD_SNAPSHOT_EVERY_ENTRIES:-1000000000000}" \
            STACKD_SNAPSHOT_EVERY_LOG_BYTES="${STACKD_SNAPSHOT_EVERY_LOG_BYTES:-1000000000000000}"
    fi
else
    CONNECTIONS="${CONNECTIONS:-4}"
    KEYS="${KEYS:-10}" VALUE_SIZE="${VALUE_SIZE:-1000000}" SNAPSHOT="${SNAPSHOT:-1}"
fi
API_PORT="${API_PORT:-7731}" CLUSTER_PORT="${CLUSTER_PORT:-7831}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
STACKD_BIN="${STACKD_BIN:-$CARGO_TARGET_DIR/release/stackd}"
LOADGEN="${LOADGEN:-$CARGO_TARGET_DIR/release/loadgen}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"

if [[ ! -x "$STACKD_BIN" || ! -x "$LOADGEN" ]]; then
    echo "memory: building stackd and loadgen (release)" >&2
    cargo build --release -p node -p benches >&2
fi

export STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 \
    STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000
cluster() {
    STACKD_BIN="$STACKD_BIN" STACKD_DATA="$WORK/data" API_PORT="$API_PORT" \
        CLUSTER_PORT="$CLUSTER_PORT" GATEWAY_PORT=none RESP_PORT=none \
        STACKD_INSECURE_NO_AUTH=true deploy/local-cluster.sh "$@"
}
cleanup() {
    cluster stop >/dev/null 2>&1 || true
    [[ "${KEEP:-}" == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
cluster start >"$WORK/start.log" 2>&1 || { cat "$WORK/start.log" >&2; exit 1; }

# field NODE NAME: a figure of /proc/PID/status, in MiB.
field() { awk -v f="$2:" '$1 == f {printf "%d", $2 / 1024}' "/proc/$(cat "$WORK/data/node$1.pid")/status"; }
declare -A start
for n in 1 2 3; do start[$n]="$(field "$n" VmRSS)"; done

if [[ -n "$DATA_MB" ]]; then
    echo "memory: $DATA_MB MB of live data ($KEYS keys of $VALUE_SIZE bytes), then $DURATION s of reads, $CONNECTIONS connections" >&2
    "$LOADGEN" --workload stale-get --keys "$KEYS" --value-size "$VALUE_SIZE" \
        --connections "$CONNECTIONS" \
        --targets "http://127.0.0.1:$API_PORT,http://127.0.0.2:$API_PORT,http://127.0.0.3:$API_PORT" \
        --duration-secs "$DURATION" --warmup-secs 0 --json >"$WORK/loadgen.json" 2>"$WORK/loadgen.log"
else
    echo "memory: $DURATION s of puts, $CONNECTIONS connections, $KEYS keys, $VALUE_SIZE-byte values" >&2
    "$LOADGEN" --workload put --keys "$KEYS" --value-size "$VALUE_SIZE" \
        --connections "$CONNECTIONS" --targets "http://127.0.0.1:$API_PORT" \
        --duration-secs "$DURATION" --warmup-secs 0 --json >"$WORK/loadgen.json" 2>"$WORK/loadgen.log"
fi
read -r ops errors < <(python3 -c 'import json,sys; r = json.load(open(sys.argv[1])); print(r["ops"], r["errors"])' "$WORK/loadgen.json")
if [[ "$SNAPSHOT" == 1 ]]; then
    # A snapshot on the leader now (it waits for it): the peak then covers building one.
    curl -fsS -X POST "http://127.0.0.1:$API_PORT/v1/cluster/snapshot" >"$WORK/snapshot.json"
fi

if [[ -n "$DATA_MB" ]]; then
    echo "$KEYS keys ($DATA_MB MB of values) written, then $ops reads ($errors errors)"
else
    echo "$ops puts ($((ops * VALUE_SIZE / 1000000)) MB of values, $errors errors) over $KEYS keys"
fi
echo
echo "| node | RSS before (MiB) | RSS after (MiB) | peak RSS (MiB) | data dir (MiB) | snapshots built |"
echo "|---|---:|---:|---:|---:|---:|"
for n in 1 2 3; do
    dir_mb="$(du -sm "$WORK/data/node$n" | cut -f1)"
    snaps="$(grep -c "snapshot built" "$WORK/data/node$n.log" || true)"
    echo "| $n | ${start[$n]} | $(field "$n" VmRSS) | $(field "$n" VmHWM) | $dir_mb | $snaps |"
done
