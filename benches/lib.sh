# Shell functions shared by benches/compare.sh and benches/ab.sh (sourced, not run).
# They expect the sourcing script to define `log` and `die` and to set WORK, WARMUP and
# DURATION, and an array PIDS whose processes it stops on exit.

wait_until() { # DESCRIPTION TIMEOUT_S COMMAND...
    local what="$1" deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.2
    done
}

# run_json LOG COMMAND...: runs a load generator that prints one JSON line (its stderr appended
# to $WORK/LOG) and prints that line, or {"failed": true} when it fails.
run_json() {
    local name="${1%.log}" log_file="$WORK/$1" out
    shift
    if ! out="$("$@" 2>>"$log_file")"; then
        log "  $name failed, see $log_file"
        echo '{"failed": true}'
        return
    fi
    echo "$out"
}

# start_nginx NAME WORKERS HTTP_BLOCK: an nginx of its own, in the foreground, under $WORK.
start_nginx() {
    local dir="$WORK/nginx-$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes $2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
    $3
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" </dev/null >"$dir/out.log" 2>&1 &
    PIDS+=($!)
    disown
}

# measure_wrk SYSTEM URL [WRK_ARGS...]: a warm-up, then one wrk run (2 threads, 64
# connections, WRK_ARGS added: a script, a header); prints a loadgen-like JSON line.
measure_wrk() {
    local system="$1" url="$2" out
    shift 2
    log "  $system: wrk, 2 threads, 64 connections -> $url"
    wrk -t2 -c64 -d"${WARMUP}s" "$@" "$url" >/dev/null 2>&1 || true
    if ! out="$(wrk -t2 -c64 -d"${DURATION}s" --latency "$@" "$url" 2>&1)"; then
        echo '{"failed": true}'
        return
    fi
    echo "$out" >>"$WORK/wrk.log"
    python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
lat = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
errors += sum(int(x) for x in m.groups()) if m else 0
print(json.dumps({"ops_per_sec": rps, "p50_ms": lat.get("50", 0), "p99_ms": lat.get("99", 0), "errors": errors}))
PY
}

# start_backend PORT: the gateway rows' app, an nginx of one worker answering every request
# with 100 bytes on 127.0.0.1:PORT; waits until it answers.
start_backend() {
    start_nginx backend 1 \
        "server { listen 127.0.0.1:$1; location / { return 200 '$(printf 'x%.0s' $(seq 100))'; } }"
    wait_until "nginx (backend)" 30 curl -fsS "http://127.0.0.1:$1/"
}

# route_to_backend API GATEWAY BACKEND_PORT [TOKEN]: through the stackd API at API
# (http://host:port), registers the backend as instance `backend` of service `bench` and
# routes every request to it (route `bench`); waits until the gateway at GATEWAY answers.
route_to_backend() {
    local api="$1" gateway="$2" port="$3" auth=()
    [[ -n "${4:-}" ]] && auth=(-H "Authorization: Bearer $4")
    curl -fsS -X PUT "${auth[@]}" -H 'Content-Type: application/json' \
        -d "{\"address\": \"127.0.0.1\", \"port\": $port}" \
        "$api/v1/services/bench/instances/backend" >/dev/null
    curl -fsS -X PUT "${auth[@]}" -H 'Content-Type: application/json' \
        -d '{"service": "bench"}' "$api/v1/routes/bench" >/dev/null
    wait_until "the stackd gateway at $gateway" 30 curl -fsS "$gateway/"
}
