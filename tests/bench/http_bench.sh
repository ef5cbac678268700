#!/usr/bin/env bash
# HTTP throughput and tail latency of one ckrun node, measured with wrk, and
# the same measurement of nginx serving a fixed small body as a ceiling.
#
#   tests/bench/http_bench.sh [build-dir]
#
# For PARTITION_COUNT 64 and then 4096, it starts a node and runs
# `wrk -t2 -c50 -d10s --latency` against
#   /partitions/key   a different key on every request (tests/bench/wrk_keys.lua)
#   /health           the smallest handler
#   /cluster          the whole cluster state (cached JSON, large at P=4096)
# then, at P=64, an application's Lua route (tests/bench/app_route.lua:
# router, handler coroutine, a key lookup, JSON; a different key each time)
# and prints req/s, p50, p99 and the server's CPU time per request (from
# /proc, utime + stime over the run) for each. If nginx is installed it is
# started on a free loopback port from a temporary prefix (config, pid file,
# logs and temp paths in a temp dir; nothing under / is touched), measured the
# same way, and the key lookup is compared with it: only figures from this
# run are ever put side by side.
#
# Everything runs on 127.0.0.1 and is stopped by PID. Total time is about
# 90 s with the defaults. Nothing here asserts timings: figures are printed.
#
# Environment: DURATION (10s), THREADS (2), CONNECTIONS (50), PARTITIONS
# ("64 4096"), NGINX_WORKERS (1: one loop, like ckrun), PERF=1 to record a
# `perf record -g` profile of ckrun during each key-lookup run (reports are
# written to the temp dir and their top symbols printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
PARTITIONS=${PARTITIONS:-64 4096}
NGINX_WORKERS=${NGINX_WORKERS:-1}
PERF=${PERF:-0}

if ! command -v wrk >/dev/null 2>&1; then
  echo "http_bench: wrk is not installed (Debian package 'wrk'); skipping the HTTP benchmark"
  exit 0
fi
CKRUN=$(realpath "$BUILD/ckrun")
WRK_KEYS=$(realpath tests/bench/wrk_keys.lua)
DIR=$(mktemp -d /tmp/ck-http-bench.XXXXXX)
PIDS=()

stop_pid() { # pid: SIGTERM, a bounded wait, then SIGKILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  rm -rf "$DIR"
}
trap cleanup EXIT

port() { "$CKRUN" -e 'print(require("clusterkit").free_port())'; }
wait_http() { # addr path: bounded, 100 x 0.1 s
  for _ in $(seq 1 100); do
    "$CKRUN" -e "local r = require('clusterkit').http.request{url='http://$1$2', timeout=1}
                 os.exit(r and r.status == 200 and 0 or 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "http_bench: http://$1$2 never answered 200" >&2
  return 1
}

# Figures of this run, by "server P endpoint": req/s, p99 (ms), CPU µs/request.
declare -A RPS=() P99=() CPU_US=()
TICK=$(getconf CLK_TCK)

cpu_ticks() { # pid: utime + stime of the process and of its child processes, in clock ticks
  local total=0 p t
  for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the
    # command name (which may itself hold spaces). A process gone meanwhile
    # counts 0.
    t=$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12 + $13}') || t=0
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

to_ms() { # wrk latency ("812.00us", "1.23ms", "2.01s") -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000;
    else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

printf "%-10s %-6s %-16s %12s %9s %9s %10s %8s %8s\n" \
  server P endpoint req/s p50_ms p99_ms cpu_us/req non2xx errors
bench() { # server P name pid url [wrk args...]
  local server=$1 p=$2 name=$3 pid=$4 url=$5; shift 5
  local out=$DIR/wrk-$server-$p-${name//[^a-z]/_}.txt
  local t0 t1
  t0=$(cpu_ticks "$pid")
  # WRK_SCRIPT_ARGS: arguments for the wrk script, which go after the URL.
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" ${WRK_SCRIPT_ARGS:+-- $WRK_SCRIPT_ARGS} \
    >"$out" 2>&1 || true
  t1=$(cpu_ticks "$pid")
  local rps p50 p99 non2xx errs
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
  errs=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
  if [ -z "$rps" ]; then
    echo "http_bench: wrk failed for $url:" >&2
    cat "$out" >&2
    return 1
  fi
  local p50ms p99ms cpu requests
  p50ms=$(to_ms "$p50")
  p99ms=$(to_ms "$p99")
  requests=$(awk '/requests in/ {print $1}' "$out")
  cpu=$(awk -v d="$((t1 - t0))" -v hz="$TICK" -v n="${requests:-0}" \
    'BEGIN { printf "%.1f", (n > 0 ? d / hz * 1e6 / n : 0) }')
  RPS["$server $p $name"]=$rps
  P99["$server $p $name"]=$p99ms
  CPU_US["$server $p $name"]=$cpu
  printf "%-10s %-6s %-16s %12.0f %9s %9s %10s %8s %8s\n" \
    "$server" "$p" "$name" "$rps" "$p50ms" "$p99ms" "$cpu" "${non2xx:-0}" "${errs:-0}"
}

for P in $PARTITIONS; do
  HTTP=127.0.0.1:$(port)
  RAFT=127.0.0.1:$(port)
  NODE_ID=bench HTTP_ADDR=$HTTP RAFT_ADDR=$RAFT DATA_DIR=$DIR/data-$P PARTITION_COUNT=$P \
    CK_LOG_LEVEL=warn "$CKRUN" 2>"$DIR/ckrun-$P.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_http "$HTTP" /ready
  # A short warm-up, so that LuaJIT has compiled the hot paths.
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WRK_KEYS" "http://$HTTP" >/dev/null 2>&1 || true
  cluster_bytes=$("$CKRUN" -e "local r = require('clusterkit').http.request{url='http://$HTTP/cluster', timeout=5}
                           print(r and #r.body or 0)")
  echo "# ckrun P=$P pid $NODE_PID, /cluster body $cluster_bytes bytes"
  if [ "$PERF" = 1 ] && command -v perf >/dev/null 2>&1; then
    perf record -g -o "$DIR/perf-$P.data" -p "$NODE_PID" >/dev/null 2>&1 &
    PERF_PID=$!
    bench ckrun "$P" /partitions/key "$NODE_PID" "http://$HTTP" -s "$WRK_KEYS"
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    echo "# perf: ckrun's CPU by DSO, then its top symbols, during the key-lookup run"
    perf report -i "$DIR/perf-$P.data" --no-children --sort dso -g none --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -8 | sed 's/^/#   /' || true
    perf report -i "$DIR/perf-$P.data" --no-children --sort dso,symbol -g none --percent-limit 1 \
      --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -15 | sed 's/^/#   /' || true
  else
    bench ckrun "$P" /partitions/key "$NODE_PID" "http://$HTTP" -s "$WRK_KEYS"
  fi
  bench ckrun "$P" /health "$NODE_PID" "http://$HTTP/health"
  bench ckrun "$P" /cluster "$NODE_PID" "http://$HTTP/cluster"
  stop_pid "$NODE_PID"
done

# An application route in Lua, on a node of its own (P=64).
HTTP=127.0.0.1:$(port)
RAFT=127.0.0.1:$(port)
NODE_ID=bench HTTP_ADDR=$HTTP RAFT_ADDR=$RAFT DATA_DIR=$DIR/data-app PARTITION_COUNT=64 \
  CK_LOG_LEVEL=warn "$CKRUN" tests/bench/app_route.lua 2>"$DIR/ckrun-app.log" &
APP_PID=$!
PIDS+=("$APP_PID")
wait_http "$HTTP" /ready
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WRK_KEYS" "http://$HTTP" -- 20000 /app/ >/dev/null 2>&1 || true
echo "# ckrun app_route.lua pid $APP_PID: GET /app/<key> answered by a Lua handler"
WRK_SCRIPT_ARGS="20000 /app/" bench ckrun 64 "app Lua route" "$APP_PID" "http://$HTTP" -s "$WRK_KEYS"
stop_pid "$APP_PID"

if command -v nginx >/dev/null 2>&1; then
  NGX=$DIR/nginx
  mkdir -p "$NGX/logs" "$NGX/tmp"
  NPORT=$(port)
  BODY='{"status":"healthy","node_id":"bench"}'
  cat >"$NGX/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $NGX/tmp/body;
  proxy_temp_path $NGX/tmp/proxy;
  fastcgi_temp_path $NGX/tmp/fastcgi;
  uwsgi_temp_path $NGX/tmp/uwsgi;
  scgi_temp_path $NGX/tmp/scgi;
  server {
    listen 127.0.0.1:$NPORT;
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
EOF
  nginx -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" 2>"$NGX/logs/stderr" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_http "127.0.0.1:$NPORT" /
  echo "# nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), $NGINX_WORKERS worker(s), fixed ${#BODY}-byte body (the ceiling)"
  bench nginx - "fixed body" "$NGINX_PID" "http://127.0.0.1:$NPORT/"
  # The same body for the key-lookup URLs: shows what wrk itself reaches with
  # the key-rotating script, so that the script is not mistaken for the limit.
  bench nginx - "fixed, key URLs" "$NGINX_PID" "http://127.0.0.1:$NPORT" -s "$WRK_KEYS"
  stop_pid "$NGINX_PID"
  # Side by side, this run only. The targets (issue 13): /partitions/key at
  # >= 1.0x nginx's fixed-body req/s, >= 0.8x its requests per CPU-second,
  # and p99 <= 1.2x nginx's p99.
  n="nginx - fixed body"
  for P in $PARTITIONS; do
    k="ckrun $P /partitions/key"
    awk -v p="$P" -v r="${RPS[$k]}" -v nr="${RPS[$n]}" -v c="${CPU_US[$k]}" -v nc="${CPU_US[$n]}" \
        -v q="${P99[$k]}" -v nq="${P99[$n]}" 'BEGIN {
      printf "# same run, P=%s: /partitions/key %.2fx nginx req/s (target >= 1.0), %.2fx its requests per CPU-second (target >= 0.8), p99 %.2f ms vs %.2f ms (target <= 1.2x)\n",
        p, r / nr, (c > 0 ? nc / c : 0), q, nq }'
  done
  k="ckrun 64 app Lua route"
  awk -v r="${RPS[$k]}" -v nr="${RPS[$n]}" -v c="${CPU_US[$k]}" -v nc="${CPU_US[$n]}" 'BEGIN {
    printf "# same run: the app Lua route %.2fx nginx req/s (target >= 0.73), %.2fx its requests per CPU-second\n",
      r / nr, (c > 0 ? nc / c : 0) }'
else
  echo "# nginx is not installed: no ceiling measured, nothing to compare with"
fi
