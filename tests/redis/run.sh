#!/usr/bin/env bash
# Unmodified Redis clients against a 3-node stackd cluster with access control on, started
# with deploy/local-cluster.sh (the README's way) on its own ports and data dir:
# 1. redis-cli: the answers a terminal user sees, NOAUTH without a password;
# 2. redis-py (clients.py): every supported command, pub/sub across nodes, transactions;
# 3. ioredis (ioredis.mjs): connect, set/get and subscribe across nodes.
# Needs: redis-cli (apt-get install -y redis-tools), python3 with redis >= 5 (pip), node and
# npm. Prints "N passed, M failed" per client; exits 1 on a failure.
#   STACKD_BIN=path/to/stackd tests/redis/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
export STACKD_BIN="${STACKD_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/stackd}"
export STACKD_DATA="$(mktemp -d)"
export API_PORT="${STACKD_REDIS_TEST_PORT:-17901}"
export CLUSTER_PORT=$((API_PORT + 10)) RESP_PORT=$((API_PORT + 20)) GATEWAY_PORT=none
cleanup() {
  "$root/deploy/local-cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$STACKD_DATA"
}
trap cleanup EXIT

if ! python3 -c 'import redis, sys; sys.exit(int(redis.__version__.split(".")[0]) < 5)' 2>/dev/null; then
  python3 -m pip install -q 'redis>=5' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'redis>=5'
fi
if [ ! -d "$here/node_modules/ioredis" ]; then
  (cd "$here" && npm install --no-audit --no-fund --silent)
fi

"$root/deploy/local-cluster.sh" start >/dev/null || {
  tail -20 "$STACKD_DATA"/node*.log
  exit 1
}
token="$(tr -d '[:space:]' <"$STACKD_DATA/node1/bootstrap-token")"
addrs=()
for i in 1 2 3; do addrs+=("127.0.0.$i:$RESP_PORT"); done
failed=0

# 1. redis-cli, as a person at a terminal types it.
passed=0 cli_failed=0
cli() { local n="$1"; shift; redis-cli -h "127.0.0.$n" -p "$RESP_PORT" --no-auth-warning -a "$token" "$@"; }
expect() {
  local want="$1" got="$2" what="$3"
  if [ "$got" == "$want" ]; then
    passed=$((passed + 1))
  else
    cli_failed=$((cli_failed + 1))
    echo "redis-cli: FAIL $what: want '$want', got '$got'"
  fi
}
expect "PONG" "$(cli 1 PING)" "PING"
expect "OK" "$(cli 1 SET cli:greeting hello)" "SET"
expect "hello" "$(cli 1 GET cli:greeting)" "GET on the writing node"
for _ in $(seq 1 100); do [ "$(cli 3 GET cli:greeting)" == hello ] && break; sleep 0.05; done
expect "hello" "$(cli 3 GET cli:greeting)" "GET on node 3"
expect "OK" "$(cli 2 -n 1 SET cli:kv v1)" "SET on db 1"
expect "v1" "$(cli 3 -n 1 GET cli:kv)" "linearizable GET on db 1 from node 3"
expect "5" "$(cli 2 INCRBY cli:n 5)" "INCRBY"
expect "ERR unknown command 'NOPE', with args beginning with: 'x' " "$(cli 1 NOPE x)" "unknown command"
expect "ERR wrong number of arguments for 'get' command" "$(cli 1 GET)" "wrong arity"
expect "NOAUTH Authentication required." \
  "$(redis-cli -h 127.0.0.1 -p "$RESP_PORT" GET cli:greeting)" "no password"
echo "redis-cli: $passed passed, $cli_failed failed"
[ "$cli_failed" -eq 0 ] || failed=1

# 2. redis-py, 3. ioredis.
python3 "$here/clients.py" "${addrs[@]}" "$token" || failed=1
node "$here/ioredis.mjs" "${addrs[@]}" "$token" || failed=1
exit "$failed"
