#!/usr/bin/env bash
# Key-value benchmark: a local 3-node release cluster on 127.0.0.1-3, driven by `loadgen`
# with 64 connections spread over all nodes (so most requests go through followers).
# Prints PUT, linearizable GET and stale GET throughput with p50/p99 latency.
#
# Usage: benches/kv.sh            Env: CONNECTIONS (64), DURATION (15 s), STACKD_DATA
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stackd-target}"
export STACKD_DATA="${STACKD_DATA:-$(mktemp -d)/bench-cluster}"
CONNECTIONS="${CONNECTIONS:-64}"
DURATION="${DURATION:-15}"

cargo build --release -p node -p benches
export STACKD_BIN="$CARGO_TARGET_DIR/release/stackd"
# Access control off and rate limits out of reach: this measures the server, not the
# access check (compare.sh measures that separately).
export STACKD_INSECURE_NO_AUTH=true STACKD_RATE_TOKEN_READS_PER_SEC=1000000000 \
  STACKD_RATE_TOKEN_WRITES_PER_SEC=1000000000 STACKD_RATE_IP_REQUESTS_PER_SEC=1000000000
trap 'deploy/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT
deploy/local-cluster.sh start >/dev/null
TARGETS=http://127.0.0.1:7001,http://127.0.0.2:7001,http://127.0.0.3:7001

printf '%-16s %12s %10s %10s %8s\n' workload ops/s p50_ms p99_ms errors
for w in put get stale-get; do
  out=$("$CARGO_TARGET_DIR/release/loadgen" --targets "$TARGETS" --connections "$CONNECTIONS" \
        --duration-secs "$DURATION" --warmup-secs 3 --workload "$w" --json 2>/dev/null)
  python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"{r['workload']:<16} {r['ops_per_sec']:>12.0f} {r['p50_ms']:>10.2f} {r['p99_ms']:>10.2f} {r['errors']:>8}")
PY
done
