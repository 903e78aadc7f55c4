#!/usr/bin/env bash
# Run a local 3-node stackd cluster on 127.0.0.1, 127.0.0.2 and 127.0.0.3.
#
# Usage: deploy/local-cluster.sh [start|stop|status]     (default: start)
#
# Environment:
#   STACKD_BIN       stackd binary to run (default: build it with
#                    `cargo build --bin stackd` into $CARGO_TARGET_DIR)
#   STACKD_PROFILE   cargo profile for that build: dev (default; shares the
#                    test build) or release (for benchmarks)
#   CARGO_TARGET_DIR cargo target dir for that build (default: $HOME/.cache/stackd-target)
#   STACKD_DATA      data, log and pid files (default: ./data/local-cluster)
#   API_PORT         HTTP API port of every node (default: 7001)
#   CLUSTER_PORT     cluster (Raft) port of every node (default: 7101)
#   GATEWAY_PORT     gateway port of every node: the HTTP proxy to registered
#                    services (default: 7080; "none" turns the gateway off)
#   RESP_PORT        Redis protocol port of every node (default: 6379; "none"
#                    turns it off)
#   STARTUP_TIMEOUT  seconds to wait for each startup step (default: 60)
#   STACKD_INSECURE_NO_AUTH=true  start the nodes without access control (for
#                    benchmarks comparing it; never for a cluster others reach)
#
# Access control is on: node 1 writes the cluster's management token to
# $STACKD_DATA/node1/bootstrap-token (mode 0600) and this script prints how to
# use it.
#
# Node i listens on 127.0.0.i:$API_PORT and 127.0.0.i:$CLUSTER_PORT; the
# distinct loopback addresses let all nodes use the same ports. (Linux routes
# all of 127.0.0.0/8 to lo; macOS needs `ifconfig lo0 alias 127.0.0.2` etc.)
#
# Layout under $STACKD_DATA: nodeN/ (data dir), nodeN.log, nodeN.pid.
# A start on existing data dirs restarts the nodes as the members they were; with some
# nodes still up, it restarts only the others.

set -euo pipefail

readonly NODES=(1 2 3)
readonly API_PORT="${API_PORT:-7001}"
readonly CLUSTER_PORT="${CLUSTER_PORT:-7101}"
readonly GATEWAY_PORT="${GATEWAY_PORT:-7080}"
readonly RESP_PORT="${RESP_PORT:-6379}"
readonly STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-60}"
readonly STOP_TIMEOUT=10
readonly REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Made absolute: it ends up in the nodes' command lines, which is how stale
# pid files are told apart from live nodes (see node_pid).
STACKD_DATA="${STACKD_DATA:-./data/local-cluster}"
[[ "$STACKD_DATA" == /* ]] || STACKD_DATA="$PWD/${STACKD_DATA#./}"
readonly STACKD_DATA

log() { echo "local-cluster: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

node_ip() { echo "127.0.0.$1"; }
api_url() { echo "http://$(node_ip "$1"):${API_PORT}"; }
cluster_addr() { echo "$(node_ip "$1"):${CLUSTER_PORT}"; }
data_dir() { echo "${STACKD_DATA}/node$1"; }
log_file() { echo "${STACKD_DATA}/node$1.log"; }
pid_file() { echo "${STACKD_DATA}/node$1.pid"; }
token_file() { echo "$(data_dir 1)/bootstrap-token"; }
# The management token, as a curl header (empty before node 1 made it).
auth_header() { echo "Authorization: Bearer $(cat "$(token_file)" 2>/dev/null | tr -d '[:space:]')"; }

# A data dir that exists but is empty is left over from a failed first start;
# only a non-empty one holds a member's state.
has_data() {
    local dir
    dir="$(data_dir "$1")"
    [[ -d "$dir" && -n "$(ls -A "$dir")" ]]
}

# Prints the pid of node $1 if it is running. A pid file alone is not enough:
# the pid may have been reused, so the process must also be a stackd serving
# this node's data dir.
node_pid() {
    local pidf pid args
    pidf="$(pid_file "$1")"
    [[ -f "$pidf" ]] || return 1
    pid="$(cat "$pidf")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args="$(ps -p "$pid" -o args= 2>/dev/null)" || return 1
    [[ "$args" == *serve* && "$args" == *"$(data_dir "$1")"* ]] || return 1
    echo "$pid"
}

tail_logs() {
    local i
    for i in "${NODES[@]}"; do
        if [[ -f "$(log_file "$i")" ]]; then
            echo "----- last lines of $(log_file "$i") -----" >&2
            tail -n 20 "$(log_file "$i")" >&2
        fi
    done
}

# Fails the start with the logs, leaving running nodes for inspection.
fail_start() {
    log "error: $*"
    tail_logs
    local i
    for i in "${NODES[@]}"; do
        if node_pid "$i" >/dev/null; then
            log "nodes that did start are left running for inspection; stop them with: $0 stop"
            break
        fi
    done
    exit 1
}

# Number of voters in node $1's view of the cluster, if it also knows a leader.
voter_count() {
    curl -fsS --max-time 2 -H "$(auth_header)" "$(api_url "$1")/v1/cluster" 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)
if c.get("leader_id") is None:
    sys.exit(1)
print(sum(1 for m in c.get("members", []) if m.get("role") == "voter"))
'
}

is_ready() { curl -fs --max-time 2 -o /dev/null "$(api_url "$1")/ready"; }
has_token() { [[ -s "$(data_dir "$1")/join-token" ]]; }
has_voters() { [[ "$(voter_count "$1" 2>/dev/null)" == "$2" ]]; }

# wait_for DESCRIPTION COMMAND...: polls COMMAND every 0.2 s for at most
# STARTUP_TIMEOUT seconds. Gives up early if a started node has exited, since
# then the condition can never become true.
wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + STARTUP_TIMEOUT)) i
    log "waiting for ${what}..."
    until "$@"; do
        for i in "${NODES[@]}"; do
            if [[ -f "$(pid_file "$i")" ]] && ! node_pid "$i" >/dev/null; then
                fail_start "node $i exited while waiting for ${what}"
            fi
        done
        if ((SECONDS >= deadline)); then
            fail_start "timed out after ${STARTUP_TIMEOUT}s waiting for ${what}"
        fi
        sleep 0.2
    done
}

resolve_binary() {
    if [[ -n "${STACKD_BIN:-}" ]]; then
        [[ -x "$STACKD_BIN" ]] || die "STACKD_BIN=$STACKD_BIN is not an executable file"
        BIN="$STACKD_BIN"
        return
    fi
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
    local profile="${STACKD_PROFILE:-dev}" dir=debug
    [[ "$profile" == dev ]] || dir="$profile"
    log "building stackd (cargo build --profile $profile --bin stackd)..."
    (cd "$REPO_ROOT" && cargo build --profile "$profile" --bin stackd) || die "build failed"
    BIN="$CARGO_TARGET_DIR/$dir/stackd"
    [[ -x "$BIN" ]] || die "build did not produce $BIN"
}

# start_node N [extra serve args...]
start_node() {
    local i="$1"
    shift
    local args=(serve
        --data-dir "$(data_dir "$i")"
        --api-addr "$(node_ip "$i"):${API_PORT}"
        --cluster-addr "$(cluster_addr "$i")"
        "$@")
    [[ "$GATEWAY_PORT" == none ]] || args+=(--gateway-addr "$(node_ip "$i"):${GATEWAY_PORT}")
    [[ "$RESP_PORT" == none ]] || args+=(--resp-addr "$(node_ip "$i"):${RESP_PORT}")
    mkdir -p "$(data_dir "$i")"
    echo "=== $(date '+%F %T') starting node $i: $BIN ${args[*]} ===" >>"$(log_file "$i")"
    # nohup + </dev/null: the nodes outlive this script and its terminal.
    nohup "$BIN" "${args[@]}" </dev/null >>"$(log_file "$i")" 2>&1 &
    local pid=$!
    echo "$pid" >"$(pid_file "$i")"
    # Until the forked shell has exec'd stackd, node_pid does not recognise
    # it; wait for that so later liveness checks are not fooled.
    local tries=0
    until node_pid "$i" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || fail_start "node $i exited right after starting"
        ((++tries < 50)) || fail_start "node $i (pid $pid) did not start serving"
        sleep 0.1
    done
    log "node $i started (pid $pid), log: $(log_file "$i")"
}

join_node() {
    local token
    token="$(head -n 1 "$(data_dir 1)/join-token" | tr -d '[:space:]')"
    [[ -n "$token" ]] || fail_start "$(data_dir 1)/join-token is empty"
    start_node "$1" --join "$(cluster_addr 1)" --token "$token"
}

cmd_start() {
    command -v curl >/dev/null || die "curl is required"
    command -v python3 >/dev/null || die "python3 is required"

    local i running=0 pid
    local -A up=()
    for i in "${NODES[@]}"; do
        if pid="$(node_pid "$i")"; then
            log "node $i is already running (pid $pid)"
            up[$i]=1
            running=$((running + 1))
        else
            rm -f "$(pid_file "$i")" # stale
        fi
    done
    ((running < ${#NODES[@]})) || die "the cluster is already running; use '$0 stop' first"
    # Some nodes up: the others restart from their data and rejoin them.
    ((running == 0)) || has_data 1 || die "nodes are running but $(data_dir 1) has no data; use '$0 stop' first"

    # Joining needs node 1's token, and only node 1 may create a cluster, so
    # other nodes' data without node 1's cannot be used.
    if ! has_data 1; then
        for i in "${NODES[@]:1}"; do
            has_data "$i" && die "$(data_dir "$i") has data but $(data_dir 1) does not; remove $STACKD_DATA to start over"
        done
    fi

    resolve_binary

    if ! has_data 1; then
        log "creating a new cluster in $STACKD_DATA"
        start_node 1
        wait_for "node 1 to write its join token" has_token 1
        wait_for "node 1 to be ready" is_ready 1
        for i in "${NODES[@]:1}"; do
            join_node "$i"
        done
    else
        log "restarting the cluster from existing data in $STACKD_DATA"
        # No --join: a node with data restarts as the member it was. All of
        # them start before waiting, as a leader needs a quorum of them.
        for i in "${NODES[@]}"; do
            if has_data "$i" && [[ -z "${up[$i]:-}" ]]; then start_node "$i"; fi
        done
        # Nodes whose data dir is missing (e.g. a first start that failed
        # half-way) join now, once the cluster has a leader again.
        for i in "${NODES[@]:1}"; do
            if ! has_data "$i"; then
                wait_for "node 1 to be ready" is_ready 1
                has_token 1 || fail_start "no $(data_dir 1)/join-token to join node $i with"
                join_node "$i"
            fi
        done
    fi

    wait_for "${#NODES[@]} voters in the cluster" has_voters 1 "${#NODES[@]}"
    for i in "${NODES[@]}"; do
        wait_for "node $i to be ready" is_ready "$i"
    done

    cat <<EOF

stackd local cluster is up (data, logs and pids in $STACKD_DATA):
$(for i in "${NODES[@]}"; do echo "  node $i  $(api_url "$i")"; done)

Every request needs a token. The management token (every right) is in
$(token_file) (mode 0600); give apps their own tokens
(stackd acl token create --policy NAME). Try:
  export STACKD_TOKEN=\$(cat $(token_file))
  curl -X PUT -H "Authorization: Bearer \$STACKD_TOKEN" $(api_url 2)/v1/kv/a -d x
  curl -i -H "Authorization: Bearer \$STACKD_TOKEN" $(api_url 3)/v1/kv/a
  stackd cluster status --addr $(node_ip 1):${API_PORT}    # reads STACKD_TOKEN

Admin UI: $(api_url 1)/ui/ (any node's /ui/; log in with the token above)
$(if [[ "$GATEWAY_PORT" != none ]]; then
    echo "Gateway: http://$(node_ip 1):${GATEWAY_PORT}/ (every node's port ${GATEWAY_PORT}): register an"
    echo "  app with 'stackd service register' and route to it with 'stackd route put'"
fi)
$(if [[ "$RESP_PORT" != none ]]; then
    echo "Redis protocol: every node's port ${RESP_PORT}, the token as the password:"
    echo "  redis-cli -h $(node_ip 2) -p ${RESP_PORT} --pass \$STACKD_TOKEN SET greeting hello"
fi)

Status: $0 status
Stop:   $0 stop
EOF
}

cmd_stop() {
    local i pid pids=()
    for i in "${NODES[@]}"; do
        if pid="$(node_pid "$i")"; then
            log "stopping node $i (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # Give the nodes time to shut down cleanly (flush storage) before KILL.
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid still alive after ${STOP_TIMEOUT}s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for i in "${NODES[@]}"; do rm -f "$(pid_file "$i")"; done
    if ((${#pids[@]} > 0)); then
        log "stopped ${#pids[@]} node(s)"
    else
        log "no node was running"
    fi
}

cmd_status() {
    local i pid body
    for i in "${NODES[@]}"; do
        if pid="$(node_pid "$i")"; then
            echo "node $i  $(api_url "$i")  running (pid $pid)$(is_ready "$i" && echo ", ready" || echo ", not ready")"
        else
            echo "node $i  $(api_url "$i")  not running"
        fi
    done
    for i in "${NODES[@]}"; do
        if body="$(curl -fsS --max-time 2 -H "$(auth_header)" "$(api_url "$i")/v1/cluster" 2>/dev/null)"; then
            echo
            echo "cluster as seen by node $i:"
            python3 -m json.tool <<<"$body" 2>/dev/null || echo "$body"
            return 0
        fi
    done
    echo
    echo "no node answers GET /v1/cluster"
    return 1
}

case "${1:-start}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0" ;;
*) die "unknown command '$1' (usage: $0 [start|stop|status])" ;;
esac
