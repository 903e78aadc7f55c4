#!/usr/bin/env bash
# stackd side by side with etcd and Redis on this machine, in one run.
#
# Installs etcd and Redis from Debian packages if they are missing, builds stackd in release,
# starts a 3-node stackd cluster and a 3-member etcd cluster on 127.0.0.1-3 (both fsync every
# log write, their default) and one Redis, drives each with the same `loadgen` loop (same
# connection count, key space, value size, warm-up and duration), stops everything on exit and
# prints one table: workload, stackd, peer, ratio (stackd ops/s over peer ops/s; above 1 means
# stackd is faster), with p50/p99 latency in ms.
#
# stackd runs twice side by side: the measured cluster with access control on (loadgen sends
# its management token, as apps send theirs), and a second 3-node cluster on the next ports
# with --insecure-no-auth; each stackd row is measured on both, and the "auth cost" column is
# how much slower the first is. Rate limits are set out of reach on both (1e9/s), so their
# buckets are checked but never trip: the rows measure the server, not a limit.
#
# Usage: benches/compare.sh [--markdown FILE]     (FILE also gets the table as Markdown)
#
# Environment (defaults in brackets):
#   DURATION [10]  measured seconds per row     WARMUP [3]   warm-up seconds per row
#   ROUNDS [1]     runs per row and side; the table shows each side's median round
#   KEYS [10000]   key space                    VALUE_SIZE [100]  value bytes
#   ROWS           space-separated row ids to run [all]: put-1 put-64 get-64 stale-64 cache-64
#                  lock-64 jobs-16 gateway-64 resp-get resp-get-p16 resp-set cache-wrk-64
#                  resp-publish ws-fanout
#   RESP_REQUESTS [200000]  requests per redis-benchmark run of the RESP GET rows (x4 with
#                  -P 16, /2 for SET: several seconds of replicated writes, not one)
#   STACKD_API_PORT [7201]  STACKD_CLUSTER_PORT [7301]  (the cluster without access control:
#                  these ports + 10)
#   ETCD_CLIENT_PORT [2379] ETCD_PEER_PORT [2380]  REDIS_PORT [6379] (Redis on 127.0.0.1)
#   REDIS_AOF_PORT [6380] (a second Redis with appendfsync always, for the RESP SET row)
#   STACKD_RESP_PORT [7601] (stackd's RESP listeners; without access control: + 10)
#   STACKD_GATEWAY_PORT [7401]  BACKEND_PORT [7501]  NGINX_PORT [7502] (the gateway row)
#   CEILING_PORT [7701] (the WebSocket row's ceiling server, on 127.0.0.1)
#   WORK           scratch dir for data and logs [mktemp -d]; KEEP=1 keeps it afterwards
#   STACKD_BIN     the stackd binary to measure [the release build]; set it to compare two
#                  builds of stackd, each in a run of its own against the same peers
#
# What is compared with what, and why it is fair:
# - Writes go to each cluster's leader (stackd would forward from a follower, and so would
#   etcd; going to the leader measures the replication path itself, not the extra hop).
# - Reads go to a follower: a linearizable stackd GET runs ReadIndex from that follower, as
#   does an etcd range; a stale GET (`consistency=stale`) is compared with etcd's
#   `serializable: true` range. Both are served from the follower's local state.
# - etcd is driven through its HTTP/JSON gateway (`/v3/kv/put`, `/v3/kv/range`, base64 keys
#   and values), the counterpart of stackd's HTTP API; the gateway re-encodes each call as gRPC
#   inside etcd, which costs etcd some CPU that its native gRPC clients do not pay.
# - The lock row: a stackd acquire (TTL 10 s, no wait) and release of a random lock name
#   against etcd's `/v3/lock/lock` and `/v3/lock/unlock` of the same name under a lease that
#   each connection grants once (etcd ties every lock holder to a lease), both via a follower.
# - The jobs row: each of 16 loops enqueues, claims and acks one job on a stackd follower,
#   against BullMQ (npm, benches/bullmq/jobs.mjs) doing add, getNextJob and moveToCompleted
#   with a connection of its own per loop on the Redis with appendfsync always (BullMQ keeps
#   its jobs in Redis; fsynced there as stackd fsyncs its log).
# - The cache row compares stackd's `GET /v1/cache/{key}` on one follower with Redis `GET`
#   (RESP over TCP, persistence off, as a cache is usually run). It prints
#   "n/a (endpoint missing)" when this stackd has no cache API. The cache-wrk-64 row reads the
#   same follower's cache over HTTP with wrk (a C client like redis-benchmark; the keys of the
#   RESP rows) against Redis `GET` by redis-benchmark: each server driven by an efficient client.
# - The RESP rows drive both servers with redis-benchmark (Redis' own client, 64 connections,
#   random keys of the same key space, filled beforehand): GET on a stackd follower's cache (db
#   0, read from its memory) against Redis GET, plain and pipelined 16 deep; SET on the stackd
#   leader (replicated to a majority and fsynced before the answer) against a Redis with
#   `appendonly yes, appendfsync always` (fsynced before the answer, not replicated).
#   p50/p99 are redis-benchmark's. The PUBLISH row uses `pubsubbench` instead: 100 subscribers
#   (spread over stackd's three nodes; all on the one Redis) and 4 publish loops (to stackd's
#   leader; to Redis), counting delivered messages per second and publish-to-delivery latency.
# - The gateway row: stackd's gateway (node 1's) and nginx as a reverse proxy (Debian's
#   package, `worker_processes auto`, upstream keepalive) forward to the same backend (nginx
#   answering 100 bytes, one worker), both setting X-Forwarded-For/-Proto/-Host and a request
#   id; wrk drives each with 2 threads and 64 connections. p50/p99 are wrk's.
# - The WebSocket row: `wsbench`'s 1,000 subscribers on one channel (spread over stackd's
#   three nodes) and 4 HTTP publish loops (round-robin over the nodes), against `wsceiling`,
#   a minimal broadcast server on the same WebSocket stack (no replication, no history, no
#   send-queue bounds: one process holding all 1,000 subscribers). It is not a peer product
#   but the ceiling: what the stack itself allows on this machine. Delivered messages per
#   second; p50/p99 from just before the publish to the subscriber's read.
# - Everything, the load generator included, shares this machine's cores; the ratio, not the
#   absolute figures, is the result.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$(pwd)"

MARKDOWN=""
while (($#)); do
    case "$1" in
    --markdown) MARKDOWN="$(realpath -m "$2")"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-1}"
WARMUP="${WARMUP:-3}"
KEYS="${KEYS:-10000}"
VALUE_SIZE="${VALUE_SIZE:-100}"
ROWS="${ROWS:-put-1 put-64 get-64 stale-64 cache-64 lock-64 jobs-16 gateway-64 resp-get resp-get-p16 resp-set cache-wrk-64 resp-publish ws-fanout}"
CEILING_PORT="${CEILING_PORT:-7701}"
RESP_REQUESTS="${RESP_REQUESTS:-200000}"
STACKD_RESP_PORT="${STACKD_RESP_PORT:-7601}"
REDIS_AOF_PORT="${REDIS_AOF_PORT:-6380}"
STACKD_GATEWAY_PORT="${STACKD_GATEWAY_PORT:-7401}"
BACKEND_PORT="${BACKEND_PORT:-7501}"
NGINX_PORT="${NGINX_PORT:-7502}"
STACKD_API_PORT="${STACKD_API_PORT:-7201}"
STACKD_CLUSTER_PORT="${STACKD_CLUSTER_PORT:-7301}"
ETCD_CLIENT_PORT="${ETCD_CLIENT_PORT:-2379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-2380}"
REDIS_PORT="${REDIS_PORT:-6379}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
WORK="${WORK:-$(mktemp -d /tmp/stackd-compare.XXXXXX)}"
mkdir -p "$WORK"
WORK="$(realpath "$WORK")"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

log() { echo "compare: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -------------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-benchmark >/dev/null || missing+=(redis-tools)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v npm >/dev/null || missing+=(npm)
    ((${#missing[@]} == 0)) && return
    log "installing ${missing[*]} (Debian packages)"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    # The packages' own services are not wanted: their ports would clash with ours.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
    for svc in etcd redis-server nginx; do
        "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
    done
}

# BullMQ (the jobs row's peer) from npm, at the version benches/bullmq/package-lock.json pins.
install_bullmq() {
    [[ " $ROWS " == *" jobs-16 "* ]] || return 0
    [[ -d benches/bullmq/node_modules/bullmq ]] && return 0
    log "installing BullMQ (npm ci in benches/bullmq)"
    (cd benches/bullmq && npm ci --no-audit --no-fund >&2)
}

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- processes ---------------------------------------------------------------------------
STACKD_BIN="${STACKD_BIN:-$CARGO_TARGET_DIR/release/stackd}"
PIDS=()
STACKD_STARTED=0
# Rate limits out of reach: checked on every request, never tripped.
export STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 \
    STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000 STACKD_RATE_WS_CONNECTIONS_PER_SEC=1000000000 \
    STACKD_RATE_WS_MESSAGES_PER_SEC=1000000000
stackd_cluster() {
    STACKD_BIN="$STACKD_BIN" STACKD_DATA="$WORK/stackd" \
        API_PORT="$STACKD_API_PORT" CLUSTER_PORT="$STACKD_CLUSTER_PORT" \
        GATEWAY_PORT="$STACKD_GATEWAY_PORT" RESP_PORT="$STACKD_RESP_PORT" \
        deploy/local-cluster.sh "$@"
}
# The same cluster without access control, on the next ports.
stackd_open_cluster() {
    STACKD_BIN="$STACKD_BIN" STACKD_DATA="$WORK/stackd-open" \
        API_PORT="$((STACKD_API_PORT + 10))" CLUSTER_PORT="$((STACKD_CLUSTER_PORT + 10))" \
        GATEWAY_PORT=none RESP_PORT="$((STACKD_RESP_PORT + 10))" STACKD_INSECURE_NO_AUTH=true \
        deploy/local-cluster.sh "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((STACKD_STARTED)); then
        stackd_cluster stop >/dev/null 2>&1 || true
        stackd_open_cluster stop >/dev/null 2>&1 || true
    fi
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if ((rc != 0)); then
        log "failed; logs are in $WORK"
    elif [[ "${KEEP:-0}" == 1 ]]; then
        log "data and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until, run_json, start_nginx, measure_wrk, start_backend, route_to_backend
# shellcheck source=benches/lib.sh
source benches/lib.sh

start_etcd() {
    local i cluster=""
    for i in 1 2 3; do
        port_busy "127.0.0.$i" "$ETCD_CLIENT_PORT" && die "127.0.0.$i:$ETCD_CLIENT_PORT is in use (set ETCD_CLIENT_PORT)"
        cluster+="${cluster:+,}m$i=http://127.0.0.$i:$ETCD_PEER_PORT"
    done
    for i in 1 2 3; do
        mkdir -p "$WORK/etcd"
        etcd --name "m$i" --data-dir "$WORK/etcd/m$i" \
            --listen-client-urls "http://127.0.0.$i:$ETCD_CLIENT_PORT" \
            --advertise-client-urls "http://127.0.0.$i:$ETCD_CLIENT_PORT" \
            --listen-peer-urls "http://127.0.0.$i:$ETCD_PEER_PORT" \
            --initial-advertise-peer-urls "http://127.0.0.$i:$ETCD_PEER_PORT" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token stackd-compare \
            --logger zap --log-level warn \
            </dev/null >"$WORK/etcd/m$i.log" 2>&1 &
        PIDS+=($!)
        disown # stopped by cleanup; no job-control notices

    done
    for i in 1 2 3; do
        wait_until "etcd member $i" 60 \
            sh -c "curl -fsS http://127.0.0.$i:$ETCD_CLIENT_PORT/health | grep -q '\"true\"'"
    done
}

# start_redis PORT DIR ARGS...: a Redis of its own on 127.0.0.1:PORT.
start_redis() {
    local port="$1" dir="$WORK/$2"
    shift 2
    port_busy 127.0.0.1 "$port" && die "127.0.0.1:$port is in use (set REDIS_PORT or REDIS_AOF_PORT)"
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --save '' "$@" \
        --daemonize no --dir "$dir" </dev/null >"$dir/redis.log" 2>&1 &
    PIDS+=($!)
    disown
    wait_until "redis on port $port" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
}

# --- leaders and followers ---------------------------------------------------------------
# Prints "LEADER_URL FOLLOWER_URL" of the stackd cluster whose API port is $1.
stackd_roles() {
    curl -fsS -H "Authorization: Bearer $STACKD_TOKEN" "http://127.0.0.1:$1/v1/cluster" | python3 -c '
import json, sys
c = json.load(sys.stdin)
leader = [m for m in c["members"] if m["id"] == c["leader_id"]][0]
follower = [m for m in c["members"] if m["id"] != c["leader_id"] and m["role"] == "voter"][0]
print("http://" + leader["api_addr"], "http://" + follower["api_addr"])
'
}

# Prints "LEADER_URL FOLLOWER_URL" of the etcd cluster.
etcd_roles() {
    local i leader="" follower="" status
    for i in 1 2 3; do
        status="$(curl -fsS -X POST -d '{}' "http://127.0.0.$i:$ETCD_CLIENT_PORT/v3/maintenance/status")"
        if python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(s["header"]["member_id"] != s["leader"])' "$status"; then
            leader="http://127.0.0.$i:$ETCD_CLIENT_PORT"
        elif [[ -z "$follower" ]]; then
            follower="http://127.0.0.$i:$ETCD_CLIENT_PORT"
        fi
    done
    [[ -n "$leader" && -n "$follower" ]] || return 1
    echo "$leader $follower"
}

# "n/a (...)" when this stackd has no cache API, nothing when it has.
cache_missing() {
    local code body
    body="$WORK/cache-probe"
    code="$(curl -sS -o "$body" -w '%{http_code}' -X PUT --data-binary x \
        -H "Authorization: Bearer $STACKD_TOKEN" \
        "$STACKD_FOLLOWER/v1/cache/compare-probe" || echo 000)"
    if [[ "$code" == 2* ]]; then
        return
    elif [[ "$code" == 404 ]] && grep -q 'no such route' "$body"; then
        echo "n/a (endpoint missing)"
    else
        echo "n/a (probe: HTTP $code)"
    fi
}

# --- rows --------------------------------------------------------------------------------
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
ROW_NO=0

# measure SYSTEM PROTOCOL WORKLOAD CONNECTIONS TARGET: one loadgen run; prints its JSON line.
# The stackd cluster with access control gets the management token; the other one none.
measure() {
    local system="$1" protocol="$2" workload="$3" connections="$4" target="$5" token=""
    [[ "$system" == stackd ]] && token="$STACKD_TOKEN"
    log "  $system: $workload, $connections connection(s) -> $target"
    if [[ "$protocol" == bullmq ]]; then
        run_json bullmq.log node benches/bullmq/jobs.mjs --redis "$target" \
            --workers "$connections" --duration-secs "$DURATION" --warmup-secs "$WARMUP"
        return
    fi
    run_json loadgen.log env STACKD_TOKEN="$token" "$LOADGEN" --protocol "$protocol" \
        --workload "$workload" --connections "$connections" --targets "$target" --keys "$KEYS" \
        --value-size "$VALUE_SIZE" --duration-secs "$DURATION" --warmup-secs "$WARMUP" --json
}

# record_round TITLE PEER STACKD PEER_RESULT [OPEN]: appends one round of a row to $RESULTS
# (each result a JSON line; OPEN, stackd without access control, "-" when not measured).
record_round() {
    local open="${5:-}"
    [[ -n "$open" ]] || open='{"skipped": "-"}'
    python3 -c 'import json,sys; print(json.dumps({"title": sys.argv[1], "peer": sys.argv[2], "stackd": json.loads(sys.argv[3]), "other": json.loads(sys.argv[4]), "open": json.loads(sys.argv[5])}))' \
        "$1" "$2" "$3" "$4" "$open" >>"$RESULTS"
}

# row ID TITLE CONNECTIONS STACKD_WORKLOAD STACKD_TARGET PEER PEER_PROTOCOL PEER_WORKLOAD PEER_TARGET [SKIP_REASON]
# Runs one comparison ROUNDS times and appends each round to $RESULTS. The two sides take
# turns going first, so slow drift on this shared machine does not always favour the same one;
# stackd without access control is measured right after stackd with it (same target node, on
# the other cluster).
row() {
    local id="$1" title="$2" conns="$3" s_work="$4" s_target="$5" peer="$6" p_proto="$7" \
        p_work="$8" p_target="$9" skip="${10:-}" stackd peer_out round open='{"skipped": "-"}'
    [[ " $ROWS " == *" $id "* ]] || return 0
    local o_target="${s_target%:*}:$((${s_target##*:} + 10))"
    for ((round = 1; round <= ROUNDS; round++)); do
        log "row: $title (round $round of $ROUNDS)"
        if [[ -z "$skip" ]]; then
            if ((round % 2)); then
                open="$(measure stackd-open stackd "$s_work" "$conns" "$o_target")"
            fi
        fi
        if [[ -n "$skip" ]]; then
            stackd="{\"skipped\": \"$skip\"}"
            peer_out="$(measure "$peer" "$p_proto" "$p_work" "$conns" "$p_target")"
        elif [[ "$p_proto" == none ]]; then
            stackd="$(measure stackd stackd "$s_work" "$conns" "$s_target")"
            peer_out='{"skipped": "no peer in this run"}'
        elif ((ROW_NO++ % 2 == 0)); then
            stackd="$(measure stackd stackd "$s_work" "$conns" "$s_target")"
            peer_out="$(measure "$peer" "$p_proto" "$p_work" "$conns" "$p_target")"
        else
            peer_out="$(measure "$peer" "$p_proto" "$p_work" "$conns" "$p_target")"
            stackd="$(measure stackd stackd "$s_work" "$conns" "$s_target")"
        fi
        if [[ -z "$skip" ]] && ((round % 2 == 0)); then
            open="$(measure stackd-open stackd "$s_work" "$conns" "$o_target")"
        fi
        record_round "$title" "$peer" "$stackd" "$peer_out" "$open"
    done
}

# --- the Redis protocol, with redis-benchmark -------------------------------------------
# measure_rb SYSTEM HOST PORT ARGS...: one redis-benchmark run (64 connections); prints a
# loadgen-like JSON line. stackd with access control gets the management token.
measure_rb() {
    local system="$1" host="$2" port="$3" out auth=()
    shift 3
    [[ "$system" == stackd ]] && auth=(-a "$STACKD_TOKEN")
    log "  $system: redis-benchmark $* -> $host:$port"
    if ! out="$(redis-benchmark -h "$host" -p "$port" "${auth[@]}" -c 64 -r "$KEYS" \
        -d "$VALUE_SIZE" --csv "$@" 2>>"$WORK/redis-benchmark.log")"; then
        echo '{"failed": true}'
        return
    fi
    echo "$out" >>"$WORK/redis-benchmark.log"
    python3 - "$out" <<'PY'
import csv, io, json, sys
rows = list(csv.reader(io.StringIO(sys.argv[1])))
head, vals = rows[0], rows[-1]
v = dict(zip(head, vals))
print(json.dumps({"ops_per_sec": float(v["rps"]), "p50_ms": float(v["p50_latency_ms"]),
                  "p99_ms": float(v["p99_latency_ms"]), "errors": 0}))
PY
}

# resp_row ID TITLE STACKD_HOST PEER PEER_PORT ARGS...: redis-benchmark ARGS against stackd
# (both clusters) and the peer, ROUNDS times, taking turns going first.
resp_row() {
    local id="$1" title="$2" host="$3" peer="$4" peer_port="$5" round s o open
    shift 5
    [[ " $ROWS " == *" $id "* ]] || return 0
    for ((round = 1; round <= ROUNDS; round++)); do
        log "row: $title (round $round of $ROUNDS)"
        if ((round % 2)); then
            s="$(measure_rb stackd "$host" "$STACKD_RESP_PORT" "$@")"
            o="$(measure_rb "$peer" 127.0.0.1 "$peer_port" "$@")"
        else
            o="$(measure_rb "$peer" 127.0.0.1 "$peer_port" "$@")"
            s="$(measure_rb stackd "$host" "$STACKD_RESP_PORT" "$@")"
        fi
        open="$(measure_rb stackd-open "$host" "$((STACKD_RESP_PORT + 10))" "$@")"
        record_round "$title" "$peer" "$s" "$o" "$open"
    done
}

# measure_pubsub SYSTEM TARGETS PUBLISH_TO: one pubsubbench run; prints its JSON line.
measure_pubsub() {
    local system="$1" password=()
    [[ "$system" == stackd ]] && password=(--password "$STACKD_TOKEN")
    log "  $system: pubsubbench, 100 subscribers on $2, 4 publishers -> $3"
    run_json pubsubbench.log "$CARGO_TARGET_DIR/release/pubsubbench" --targets "$2" \
        --publish-to "$3" --subscribers 100 --publishers 4 --duration-secs "$DURATION" \
        --warmup-secs "$WARMUP" "${password[@]}" --json
}

publish_row() {
    [[ " $ROWS " == *" resp-publish "* ]] || return 0
    local round s o open title="RESP PUBLISH fan-out, 100 subscribers, 4 publishers (delivered msgs/s)"
    local leader="${STACKD_LEADER#http://}" targets="" i
    leader="${leader%:*}"
    for i in 1 2 3; do targets+="${targets:+,}127.0.0.$i:"; done
    local s_targets="${targets//:,/:$STACKD_RESP_PORT,}$STACKD_RESP_PORT"
    local o_targets="${targets//:,/:$((STACKD_RESP_PORT + 10)),}$((STACKD_RESP_PORT + 10))"
    for ((round = 1; round <= ROUNDS; round++)); do
        log "row: $title (round $round of $ROUNDS)"
        if ((round % 2)); then
            s="$(measure_pubsub stackd "$s_targets" "$leader:$STACKD_RESP_PORT")"
            o="$(measure_pubsub redis "127.0.0.1:$REDIS_PORT" "127.0.0.1:$REDIS_PORT")"
        else
            o="$(measure_pubsub redis "127.0.0.1:$REDIS_PORT" "127.0.0.1:$REDIS_PORT")"
            s="$(measure_pubsub stackd "$s_targets" "$leader:$STACKD_RESP_PORT")"
        fi
        open="$(measure_pubsub stackd-open "$o_targets" "$leader:$((STACKD_RESP_PORT + 10))")"
        record_round "$title" redis "$s" "$o" "$open"
    done
}

# The key space of the RESP rows (redis-benchmark's `key:000000000042` for 0 to KEYS - 1),
# every key written once (pipelined SETs of VALUE_SIZE bytes, redis-cli --pipe) into both
# stackd clusters' caches and both Redis servers, so every GET finds its key.
KEY_SPACE_FILLED=""
fill_key_space() {
    [[ -z "$KEY_SPACE_FILLED" ]] || return 0
    local leader="${STACKD_LEADER#http://}" port sets="$WORK/fill.resp"
    leader="${leader%:*}"
    python3 - "$KEYS" "$VALUE_SIZE" >"$sets" <<'PY'
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
value = "x" * size
out = sys.stdout
for i in range(keys):
    key = "key:%012d" % i
    out.write(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${size}\r\n{value}\r\n")
PY
    log "filling the key space on every server ($KEYS keys, redis-cli --pipe)"
    for port in "$STACKD_RESP_PORT" "$((STACKD_RESP_PORT + 10))"; do
        local auth=()
        ((port == STACKD_RESP_PORT)) && auth=(-a "$STACKD_TOKEN" --no-auth-warning)
        redis-cli -h "$leader" -p "$port" "${auth[@]}" --pipe <"$sets" >>"$WORK/fill.log" 2>&1 ||
            die "filling stackd on $leader:$port failed, see $WORK/fill.log"
    done
    for port in "$REDIS_PORT" "$REDIS_AOF_PORT"; do
        redis-cli -h 127.0.0.1 -p "$port" --pipe <"$sets" >>"$WORK/fill.log" 2>&1 ||
            die "filling Redis on port $port failed, see $WORK/fill.log"
    done
    KEY_SPACE_FILLED=1
}

resp_rows() {
    [[ " $ROWS " == *" resp-"* ]] || return 0
    local leader="${STACKD_LEADER#http://}" follower="${STACKD_FOLLOWER#http://}"
    leader="${leader%:*}" follower="${follower%:*}"
    fill_key_space
    resp_row resp-get "RESP GET, 64 conns (stackd follower cache)" "$follower" redis "$REDIS_PORT" \
        -t get -n "$RESP_REQUESTS"
    resp_row resp-get-p16 "RESP GET pipelined 16 deep, 64 conns (stackd follower cache)" \
        "$follower" redis "$REDIS_PORT" -t get -P 16 -n "$((RESP_REQUESTS * 4))"
    resp_row resp-set "RESP SET, 64 conns (stackd leader, replicated; Redis appendfsync always)" \
        "$leader" redis-aof "$REDIS_AOF_PORT" -t set -n "$((RESP_REQUESTS / 2))"
}

# The HTTP cache GET with an efficient client on both sides: wrk (C, a Lua script picking a
# random key of the RESP rows' key space per request) against a follower's `GET
# /v1/cache/{key}`, and redis-benchmark against Redis `GET`. The cache-64 row drives both with
# loadgen, whose HTTP client takes about 3x the CPU per request of its RESP loop (24-28 against
# 9 us, a whole core either way), which caps that row's stackd side; this row shows the servers.
cache_wrk_row() {
    [[ " $ROWS " == *" cache-wrk-64 "* ]] || return 0
    local round s o open title="cache GET, 64 conns: HTTP by wrk (stackd follower), RESP by redis-benchmark"
    local script="$WORK/cache-get.lua" follower_port="${STACKD_FOLLOWER##*:}"
    fill_key_space
    cat >"$script" <<EOF
local threads = 0
function setup(thread) threads = threads + 1; thread:set("seed", threads) end
function init(args) math.randomseed(seed) end
function request()
    return wrk.format("GET", string.format("/v1/cache/key:%012d", math.random(0, $KEYS - 1)))
end
EOF
    local s_url="$STACKD_FOLLOWER" o_url="${STACKD_FOLLOWER%:*}:$((follower_port + 10))"
    for ((round = 1; round <= ROUNDS; round++)); do
        log "row: $title (round $round of $ROUNDS)"
        if ((round % 2)); then
            s="$(measure_wrk stackd "$s_url" -s "$script" -H "Authorization: Bearer $STACKD_TOKEN")"
            o="$(measure_rb redis 127.0.0.1 "$REDIS_PORT" -t get -n "$RESP_REQUESTS")"
        else
            o="$(measure_rb redis 127.0.0.1 "$REDIS_PORT" -t get -n "$RESP_REQUESTS")"
            s="$(measure_wrk stackd "$s_url" -s "$script" -H "Authorization: Bearer $STACKD_TOKEN")"
        fi
        open="$(measure_wrk stackd-open "$o_url" -s "$script")"
        record_round "$title" redis "$s" "$o" "$open"
    done
}

# --- the gateway against nginx -----------------------------------------------------------
gateway_row() {
    [[ " $ROWS " == *" gateway-64 "* ]] || return 0
    local round s n title="HTTP proxy to one backend, 64 conns (wrk)"
    start_backend "$BACKEND_PORT"
    start_nginx proxy auto "upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive 256; }
    server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://app;
        proxy_http_version 1.1; proxy_set_header Connection \"\";
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Request-Id \$request_id; } }"
    wait_until "nginx (proxy)" 30 curl -fsS "http://127.0.0.1:$NGINX_PORT/"
    route_to_backend "http://127.0.0.1:$STACKD_API_PORT" "http://127.0.0.1:$STACKD_GATEWAY_PORT" \
        "$BACKEND_PORT" "$STACKD_TOKEN"
    for ((round = 1; round <= ROUNDS; round++)); do
        log "row: $title (round $round of $ROUNDS)"
        if ((round % 2)); then
            s="$(measure_wrk stackd "http://127.0.0.1:$STACKD_GATEWAY_PORT/")"
            n="$(measure_wrk nginx "http://127.0.0.1:$NGINX_PORT/")"
        else
            n="$(measure_wrk nginx "http://127.0.0.1:$NGINX_PORT/")"
            s="$(measure_wrk stackd "http://127.0.0.1:$STACKD_GATEWAY_PORT/")"
        fi
        record_round "$title" nginx "$s" "$n"
    done
}

# measure_ws SYSTEM TARGETS [TOKEN]: one wsbench run; prints its JSON line.
measure_ws() {
    local system="$1"
    log "  $system: wsbench, 1,000 subscribers on $2, 4 publishers"
    run_json wsbench.log env STACKD_TOKEN="${3:-}" "$CARGO_TARGET_DIR/release/wsbench" \
        --targets "$2" --subscribers 1000 --publishers 4 --duration-secs "$DURATION" \
        --warmup-secs "$WARMUP" --json
}

ws_row() {
    [[ " $ROWS " == *" ws-fanout "* ]] || return 0
    local round s o open title="WebSocket fan-out, 1,000 subscribers, 4 publishers (delivered msgs/s)"
    local s_targets="" o_targets="" i
    for i in 1 2 3; do
        s_targets+="${s_targets:+,}http://127.0.0.$i:$STACKD_API_PORT"
        o_targets+="${o_targets:+,}http://127.0.0.$i:$((STACKD_API_PORT + 10))"
    done
    port_busy 127.0.0.1 "$CEILING_PORT" && die "127.0.0.1:$CEILING_PORT is in use (set CEILING_PORT)"
    "$CARGO_TARGET_DIR/release/wsceiling" --listen "127.0.0.1:$CEILING_PORT" \
        </dev/null >"$WORK/wsceiling.log" 2>&1 &
    PIDS+=($!)
    disown
    wait_until "wsceiling" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$CEILING_PORT"
    local ceiling="http://127.0.0.1:$CEILING_PORT"
    for ((round = 1; round <= ROUNDS; round++)); do
        log "row: $title (round $round of $ROUNDS)"
        if ((round % 2)); then
            s="$(measure_ws stackd "$s_targets" "$STACKD_TOKEN")"
            o="$(measure_ws ceiling "$ceiling")"
        else
            o="$(measure_ws ceiling "$ceiling")"
            s="$(measure_ws stackd "$s_targets" "$STACKD_TOKEN")"
        fi
        open="$(measure_ws stackd-open "$o_targets")"
        record_round "$title" wsceiling "$s" "$o" "$open"
    done
}

# --- run ---------------------------------------------------------------------------------
install_packages
install_bullmq
# The machine's load before anything of the run starts: the ratios assume both sides share an
# otherwise quiet machine, so a busy one is said in the output.
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 -c 'import os, sys; sys.exit(0 if os.getloadavg()[0] <= os.cpu_count() else 1)' ||
    log "warning: load average $LOAD_BEFORE is above the $(nproc) cores before the run starts; other work will skew the figures"
# wsbench holds 1,000 sockets, each stackd node a third of them, wsceiling all of them.
ulimit -n 65536 2>/dev/null || true
log "building stackd and loadgen (release); measuring $STACKD_BIN"
cargo build --release -p node -p benches >&2

for i in 1 2 3; do
    port_busy "127.0.0.$i" "$STACKD_API_PORT" && die "127.0.0.$i:$STACKD_API_PORT is in use (set STACKD_API_PORT)"
done
log "starting stackd (3 nodes, API port $STACKD_API_PORT; without access control: $((STACKD_API_PORT + 10))), data in $WORK"
STACKD_STARTED=1
stackd_cluster start >"$WORK/stackd-start.log" 2>&1 || { cat "$WORK/stackd-start.log" >&2; die "stackd did not start"; }
stackd_open_cluster start >"$WORK/stackd-open-start.log" 2>&1 || { cat "$WORK/stackd-open-start.log" >&2; die "stackd (no access control) did not start"; }
STACKD_TOKEN="$(tr -d '[:space:]' <"$WORK/stackd/node1/bootstrap-token")"
export STACKD_TOKEN
log "starting etcd (3 members, client port $ETCD_CLIENT_PORT)"
start_etcd
log "starting redis (127.0.0.1:$REDIS_PORT; with appendfsync always: $REDIS_AOF_PORT)"
start_redis "$REDIS_PORT" redis --appendonly no
start_redis "$REDIS_AOF_PORT" redis-aof --appendonly yes --appendfsync always

read -r STACKD_LEADER STACKD_FOLLOWER < <(stackd_roles "$STACKD_API_PORT") || die "no stackd leader"
# The other cluster's leader and follower must sit at the same addresses (node i on 127.0.0.i).
read -r OPEN_LEADER OPEN_FOLLOWER < <(stackd_roles "$((STACKD_API_PORT + 10))") || die "no stackd (open) leader"
if [[ "${OPEN_LEADER%:*}" != "${STACKD_LEADER%:*}" ]]; then
    to="$(python3 -c 'import sys; print(sys.argv[1].split("//")[1].split(":")[0].rsplit(".", 1)[1])' "$STACKD_LEADER")"
    log "moving the open cluster's leadership to node $to, as in the measured cluster"
    curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"to\": $to}" \
        "http://127.0.0.1:$((STACKD_API_PORT + 10))/v1/cluster/leader/transfer" >/dev/null
    read -r OPEN_LEADER OPEN_FOLLOWER < <(stackd_roles "$((STACKD_API_PORT + 10))")
fi
log "open cluster: leader $OPEN_LEADER, follower $OPEN_FOLLOWER"
wait_until "an etcd leader" 30 etcd_roles
read -r ETCD_LEADER ETCD_FOLLOWER < <(etcd_roles)
log "stackd leader $STACKD_LEADER, follower $STACKD_FOLLOWER; etcd leader $ETCD_LEADER, follower $ETCD_FOLLOWER"
CACHE_SKIP="$(cache_missing)"

# To add a row: one line here (and a row id in ROWS above), plus a workload in loadgen if the
# load is new. Titles say what both sides do.
row put-1 "kv put, 1 conn (leader)" 1 put "$STACKD_LEADER" etcd etcd put "$ETCD_LEADER"
row put-64 "kv put, 64 conns (leader)" 64 put "$STACKD_LEADER" etcd etcd put "$ETCD_LEADER"
row get-64 "linearizable get, 64 conns (follower)" 64 get "$STACKD_FOLLOWER" etcd etcd get "$ETCD_FOLLOWER"
row stale-64 "stale get, 64 conns (follower)" 64 stale-get "$STACKD_FOLLOWER" etcd etcd stale-get "$ETCD_FOLLOWER"
row cache-64 "cache GET, 64 conns (stackd follower)" 64 cache-get "$STACKD_FOLLOWER" redis redis get \
    "redis://127.0.0.1:$REDIS_PORT" "$CACHE_SKIP"
# Locks: stackd's acquire (with a TTL) and release against etcd's /v3/lock/lock and
# /v3/lock/unlock under a lease held by each connection, both through a follower.
row lock-64 "lock acquire+release pairs, 64 conns (follower)" 64 lock "$STACKD_FOLLOWER" etcd etcd lock "$ETCD_FOLLOWER"
# Jobs: stackd's enqueue, claim and ack against BullMQ's add, getNextJob and moveToCompleted,
# on the Redis that fsyncs every write (appendfsync always), as stackd does.
row jobs-16 "jobs end to end (enqueue, claim, ack), 16 workers (follower)" 16 jobs "$STACKD_FOLLOWER" \
    bullmq bullmq jobs "127.0.0.1:$REDIS_AOF_PORT"

gateway_row
resp_rows
cache_wrk_row
publish_row
ws_row

# Redis measured by its own client too, so the loadgen figure for Redis can be checked.
if [[ " $ROWS " == *" cache-64 "* ]]; then
    log "redis-benchmark -t get -c 64 (Redis' own client, for reference)"
    REDIS_BENCH="$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t get -c 64 -n 400000 -d "$VALUE_SIZE" -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1 || true)"
fi

export REDIS_BENCH="${REDIS_BENCH:-}"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
export LOAD_BEFORE LOAD_AFTER
python3 - "$RESULTS" "$MARKDOWN" "$DURATION" "$WARMUP" "$KEYS" "$VALUE_SIZE" "$ROUNDS" <<'PY'
import json, sys
results, markdown, duration, warmup, keys, value_size, rounds = sys.argv[1:]

def median_round(runs):
    """The run with the median throughput (the lower middle one for an even count)."""
    ok = sorted((r for r in runs if "ops_per_sec" in r), key=lambda r: r["ops_per_sec"])
    return ok[(len(ok) - 1) // 2] if ok else runs[0]

rounds_by_title = {}
for line in open(results):
    r = json.loads(line)
    rounds_by_title.setdefault(r["title"], []).append(r)
rows = [
    {"title": title, "peer": rs[0]["peer"],
     "stackd": median_round([r["stackd"] for r in rs]),
     "open": median_round([r.get("open", {"skipped": "-"}) for r in rs]),
     "other": median_round([r["other"] for r in rs])}
    for title, rs in rounds_by_title.items()
]

def cell(r):
    if "skipped" in r:
        return r["skipped"]
    if r.get("failed"):
        return "failed"
    err = f", {r['errors']} err" if r["errors"] else ""
    return f"{r['ops_per_sec']:,.0f}/s ({r['p50_ms']:.2f} / {r['p99_ms']:.2f}){err}"

def ratio(s, o):
    ok = lambda r: "ops_per_sec" in r and r["ops_per_sec"] > 0
    return f"{s['ops_per_sec'] / o['ops_per_sec']:.2f}x" if ok(s) and ok(o) else "-"

def cost(on, off):
    ok = lambda r: "ops_per_sec" in r and r["ops_per_sec"] > 0
    return f"{(1 - on['ops_per_sec'] / off['ops_per_sec']) * 100:+.1f}%" if ok(on) and ok(off) else "-"

header = ["workload", "stackd ops/s (p50 / p99 ms)", "stackd auth off", "auth cost", "peer",
          "peer ops/s (p50 / p99 ms)", "ratio"]
table = [[r["title"], cell(r["stackd"]), cell(r["open"]), cost(r["stackd"], r["open"]), r["peer"],
          cell(r["other"]), ratio(r["stackd"], r["other"])] for r in rows]
widths = [max(len(x) for x in col) for col in zip(header, *table)]
print()
median = f"median of {rounds} rounds, " if int(rounds) > 1 else ""
print(f"{duration} s measured after {warmup} s warm-up per side and row ({median}the same loadgen "
      f"loop on both sides, except rows whose title names wrk and the RESP rows, which run "
      f"redis-benchmark for a request count); "
      f"{keys} keys, {value_size}-byte values; ratio = stackd ops/s / peer ops/s; "
      f"auth cost = how much fewer ops/s stackd serves with access control on than off")
for line in [header, ["-" * w for w in widths]] + table:
    print("  ".join(x.ljust(w) for x, w in zip(line, widths)))
import os
print(f"load average (1, 5, 15 min) before the run: {os.environ['LOAD_BEFORE']}; at its end: "
      f"{os.environ['LOAD_AFTER']} ({os.cpu_count()} cores; the run itself keeps about 3 busy)")
if os.environ.get("REDIS_BENCH"):
    print(f"redis-benchmark -t get -c 64: {os.environ['REDIS_BENCH'].strip()}")
if markdown:
    with open(markdown, "w") as f:
        f.write("| " + " | ".join(header) + " |\n|---|---:|---:|---:|---|---:|---:|\n")
        for line in table:
            f.write("| " + " | ".join(line) + " |\n")
PY
