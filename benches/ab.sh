#!/usr/bin/env bash
# Two builds of stackd side by side in one run: each row measured on both, the order
# alternating per round, so the machine's drift falls on both alike.
#
# Usage: benches/ab.sh BASE [TARGET]
#   BASE, TARGET  git commits (anything `git rev-parse` takes); TARGET defaults to HEAD.
#
# Each commit is checked out in a worktree of its own under $WORK and built in release with
# its own code only: the workspace's crates are cleaned from the shared target dir before each
# build, because cargo may take a workspace crate built from another checkout for fresh when
# their dependencies match. Both clusters (3 nodes each, access control off, rate limits out
# of reach) run at once on 127.0.0.1-3 with the commit's own deploy/local-cluster.sh; the
# load comes from this checkout's loadgen (release), the same for both. Beside each build's
# ops/s it prints the CPU its three nodes used per operation (user + system time from /proc,
# over warmup and measurement): on a shared machine whose speed drifts, CPU per operation
# moves far less than throughput and says which build does more work per request.
#
# Environment (defaults in brackets):
#   ROWS [put-1 put-64 get-64 stale-64 cache-64 lock-64 jobs-16]   rows, as in compare.sh;
#              also gateway-64: wrk (2 threads, 64 connections) through node 1's gateway to
#              one nginx backend, as compare.sh's gateway row
#   ROUNDS [3]  runs per row and build       DURATION [6]  WARMUP [2]  seconds per run
#   KEYS [10000] VALUE_SIZE [100]           WORK  scratch dir [mktemp -d]; KEEP=1 keeps it
#   BASE_BIN, TARGET_BIN  use these stackd binaries instead of building (the worktrees are
#                         still made, for their deploy scripts); LOADGEN likewise for loadgen
#   API_PORT [7701]  CLUSTER_PORT [7801]  GATEWAY_PORT [7901]  (the target's cluster: these
#              + 10)  BACKEND_PORT [7921] (the gateway row's nginx backend, on 127.0.0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$(pwd)"

case "${1:-}" in
"" | -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "$0"; exit 2 ;;
esac
BASE="$(git rev-parse --short "$1")"
TARGET="$(git rev-parse --short "${2:-HEAD}")"

ROWS="${ROWS:-put-1 put-64 get-64 stale-64 cache-64 lock-64 jobs-16}"
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-6}" WARMUP="${WARMUP:-2}"
KEYS="${KEYS:-10000}" VALUE_SIZE="${VALUE_SIZE:-100}"
API_PORT="${API_PORT:-7701}" CLUSTER_PORT="${CLUSTER_PORT:-7801}"
GATEWAY_PORT="${GATEWAY_PORT:-7901}" BACKEND_PORT="${BACKEND_PORT:-7921}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
# Rate limits out of reach: checked on every request, never tripped.
export STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 \
    STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000

log() { echo "ab: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The workspace's own crates (not its dependencies), as `cargo clean -p` takes them.
workspace_crates() {
    cargo metadata --no-deps --format-version 1 --manifest-path "$1/Cargo.toml" |
        python3 -c 'import json,sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))'
}

# build NAME COMMIT: a worktree at $WORK/NAME and its stackd at $WORK/NAME.stackd.
build() {
    local name="$1" commit="$2" dir="$WORK/$1" given="$3"
    [[ -d "$dir" ]] || git worktree add --detach -q "$dir" "$commit"
    if [[ -n "$given" ]]; then
        cp "$given" "$WORK/$name.stackd"
        return
    fi
    log "building $name ($commit) in release"
    # shellcheck disable=SC2046 # one word per flag
    cargo clean --release $(workspace_crates "$dir") >/dev/null 2>&1
    cargo build --release --manifest-path "$dir/Cargo.toml" -p node --bin stackd \
        >"$WORK/$name-build.log" 2>&1 || { tail -20 "$WORK/$name-build.log" >&2; die "build of $commit failed"; }
    cp "$CARGO_TARGET_DIR/release/stackd" "$WORK/$name.stackd"
}

cluster() { # NAME PORT_OFFSET ACTION
    local name="$1" off="$2"
    shift 2
    (cd "$WORK/$name" && STACKD_BIN="$WORK/$name.stackd" STACKD_DATA="$WORK/$name-data" \
        API_PORT="$((API_PORT + off))" CLUSTER_PORT="$((CLUSTER_PORT + off))" \
        GATEWAY_PORT="$((GATEWAY_PORT + off))" RESP_PORT=none STACKD_INSECURE_NO_AUTH=true \
        deploy/local-cluster.sh "$@")
}

STARTED=0
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((STARTED)); then
        cluster base 0 stop >/dev/null 2>&1 || true
        cluster target 10 stop >/dev/null 2>&1 || true
    fi
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    git -C "$REPO_ROOT" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true
    git -C "$REPO_ROOT" worktree remove --force "$WORK/target" >/dev/null 2>&1 || true
    if ((rc != 0)) || [[ "${KEEP:-0}" == 1 ]]; then log "data and logs in $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until, run_json, start_nginx, measure_wrk, start_backend, route_to_backend
# shellcheck source=benches/lib.sh
source benches/lib.sh

build base "$BASE" "${BASE_BIN:-}"
build target "$TARGET" "${TARGET_BIN:-}"
if [[ -z "${LOADGEN:-}" ]]; then
    log "building loadgen (release) from this checkout"
    # shellcheck disable=SC2046 # one word per flag
    cargo clean --release $(workspace_crates "$REPO_ROOT") >/dev/null 2>&1
    cargo build --release -p benches --bin loadgen >"$WORK/loadgen-build.log" 2>&1 ||
        { tail -20 "$WORK/loadgen-build.log" >&2; die "loadgen did not build"; }
    LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
fi

STARTED=1
cluster base 0 start >"$WORK/base-start.log" 2>&1 || die "base cluster did not start (see $WORK/base-start.log)"
cluster target 10 start >"$WORK/target-start.log" 2>&1 || die "target cluster did not start (see $WORK/target-start.log)"

# Prints "LEADER_URL FOLLOWER_URL" of the cluster whose API port is $1.
roles() {
    curl -fsS "http://127.0.0.1:$1/v1/cluster" | python3 -c '
import json, sys
c = json.load(sys.stdin)
leader = [m for m in c["members"] if m["id"] == c["leader_id"]][0]
follower = [m for m in c["members"] if m["id"] != c["leader_id"] and m["role"] == "voter"][0]
print("http://" + leader["api_addr"], "http://" + follower["api_addr"])'
}
read -r BASE_L BASE_F < <(roles "$API_PORT")
read -r TARGET_L TARGET_F < <(roles "$((API_PORT + 10))")

# The gateway row: an nginx backend, and on each cluster a service and a route to it.
if [[ " $ROWS " == *" gateway-64 "* ]]; then
    start_backend "$BACKEND_PORT"
    for off in 0 10; do
        route_to_backend "http://127.0.0.1:$((API_PORT + off))" \
            "http://127.0.0.1:$((GATEWAY_PORT + off))" "$BACKEND_PORT"
    done
fi

# row ID: "WORKLOAD CONNECTIONS L|F" (leader or follower), as compare.sh runs it.
row_spec() {
    case "$1" in
    put-1) echo "put 1 L" ;; put-64) echo "put 64 L" ;; get-64) echo "get 64 F" ;;
    stale-64) echo "stale-get 64 F" ;; cache-64) echo "cache-get 64 F" ;;
    lock-64) echo "lock 64 F" ;; jobs-16) echo "jobs 16 F" ;; gateway-64) echo "gateway 64 L" ;;
    *) die "unknown row $1" ;;
    esac
}

# CPU seconds (user + system) the cluster NAME's three nodes have used so far, from /proc.
cluster_cpu() {
    local total=0 f pid
    for f in "$WORK/$1-data"/node*.pid; do
        pid="$(cat "$f")"
        [[ -r "/proc/$pid/stat" ]] || continue
        # Fields 14 and 15 (utime, stime) in clock ticks; the command name may hold spaces,
        # so count from after its closing parenthesis.
        total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
TICKS="$(getconf CLK_TCK)"

measure() { # BUILD ROW ROUND
    local build="$1" row="$2" round="$3" workload conns at target out cpu0 cpu1
    read -r workload conns at < <(row_spec "$row")
    if [[ "$build" == base ]]; then target="$BASE_L"; [[ "$at" == F ]] && target="$BASE_F"
    else target="$TARGET_L"; [[ "$at" == F ]] && target="$TARGET_F"; fi
    log "$row, round $round: $build -> $target"
    cpu0="$(cluster_cpu "$build")"
    if [[ "$workload" == gateway ]]; then
        local off=0
        [[ "$build" == target ]] && off=10
        out="$(measure_wrk "$build" "http://127.0.0.1:$((GATEWAY_PORT + off))/")"
    else
        out="$(run_json loadgen.log env STACKD_TOKEN='' "$LOADGEN" --workload "$workload" \
            --connections "$conns" --targets "$target" --keys "$KEYS" --value-size "$VALUE_SIZE" \
            --duration-secs "$DURATION" --warmup-secs "$WARMUP" --json)"
    fi
    cpu1="$(cluster_cpu "$build")"
    echo "{\"build\": \"$build\", \"row\": \"$row\", \"cpu_ticks\": $((cpu1 - cpu0)), \"ticks_per_sec\": $TICKS, \"run\": $out}" >>"$RESULTS"
}

for ((round = 1; round <= ROUNDS; round++)); do
    for row in $ROWS; do
        if ((round % 2)); then measure base "$row" "$round"; measure target "$row" "$round"
        else measure target "$row" "$round"; measure base "$row" "$round"; fi
    done
done

python3 - "$RESULTS" "$BASE" "$TARGET" "$ROUNDS" "$DURATION" "$WARMUP" <<'PY'
import json, statistics, sys
results, base, target, rounds, duration, warmup = sys.argv[1:]
runs = [json.loads(l) for l in open(results)]
rows = list(dict.fromkeys(r["row"] for r in runs))

def cpu_us_per_op(r):
    # The nodes' CPU over warmup and measurement, per operation at the measured rate.
    ops = r["run"].get("ops_per_sec", 0) * (float(duration) + float(warmup))
    return r["cpu_ticks"] / r["ticks_per_sec"] * 1e6 / ops if ops else 0

print(f"\n{rounds} rounds of {duration} s per row and build, order alternating; ops/s, median in bold")
print("CPU: the three nodes' user + system time per operation (µs), median; loadgen not counted")
print(f"| row | {base} (base) | {target} (target) | target / base | CPU µs/op base | target | target / base |")
print("|---|---:|---:|---:|---:|---:|---:|")
for row in rows:
    cells, med, cpu = [], {}, {}
    for b in ("base", "target"):
        mine = [r for r in runs if r["row"] == row and r["build"] == b]
        v = [r["run"].get("ops_per_sec", 0) for r in mine]
        med[b] = statistics.median(v)
        cpu[b] = statistics.median(cpu_us_per_op(r) for r in mine)
        cells.append(", ".join(f"{x:,.0f}" for x in v) + f"; **{med[b]:,.0f}**")
    ratio = f"{med['target'] / med['base']:.2f}x" if med["base"] else "-"
    cpu_ratio = f"{cpu['target'] / cpu['base']:.2f}x" if cpu["base"] else "-"
    print(f"| {row} | {cells[0]} | {cells[1]} | {ratio} | {cpu['base']:.1f} | {cpu['target']:.1f} | {cpu_ratio} |")
PY
