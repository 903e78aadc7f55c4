#!/usr/bin/env bash
# WebSocket fan-out benchmark: a local 3-node release cluster on 127.0.0.1-3, SUBSCRIBERS
# WebSocket clients spread over the three nodes on one channel, PUBLISHERS HTTP publish loops.
# Prints delivered messages per second and publish-to-delivery p50/p99 (see wsbench.rs).
#
# Usage: benches/ws.sh     Env: SUBSCRIBERS (1000), PUBLISHERS (4), DURATION (10 s),
#                               PUBLISH_INTERVAL_MS (0), STACKD_DATA
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
export STACKD_DATA="${STACKD_DATA:-$(mktemp -d)/bench-cluster}"
ulimit -n 65536 2>/dev/null || true

cargo build --release -p node -p benches
export STACKD_BIN="$CARGO_TARGET_DIR/release/stackd"
# Access control off and rate limits out of reach: this measures the server, not the
# access check (compare.sh measures that separately).
export STACKD_INSECURE_NO_AUTH=true STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 \
  STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000 \
  STACKD_RATE_WS_CONNECTIONS_PER_SEC=1000000000 STACKD_RATE_WS_MESSAGES_PER_SEC=1000000000
trap 'deploy/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT
deploy/local-cluster.sh start >/dev/null
"$CARGO_TARGET_DIR/release/wsbench" \
  --targets http://127.0.0.1:7001,http://127.0.0.2:7001,http://127.0.0.3:7001 \
  --subscribers "${SUBSCRIBERS:-1000}" --publishers "${PUBLISHERS:-4}" \
  --duration-secs "${DURATION:-10}" --publish-interval-ms "${PUBLISH_INTERVAL_MS:-0}" "$@"
