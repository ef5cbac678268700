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
# and prints req/s, p50 and p99 for each, next to the Go ClusterKit's figures
# on this machine kind. If nginx is installed it is started on a free loopback
# port from a temporary prefix (config, pid file, logs and temp paths in a
# temp dir; nothing under / is touched) and measured the same way.
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

# Go ClusterKit on this machine kind, wrk -t2 -c50: req/s and p99 (ms).
declare -A GO_RPS=([key]=64886 [cluster]=17450)
declare -A GO_P99=([key]=8.39 [cluster]=24.6)

to_ms() { # wrk latency ("812.00us", "1.23ms", "2.01s") -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000;
    else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

printf "%-10s %-6s %-16s %12s %9s %9s %8s %8s  %s\n" \
  server P endpoint req/s p50_ms p99_ms non2xx errors "vs Go ClusterKit"
bench() { # server P name url [wrk args...]
  local server=$1 p=$2 name=$3 url=$4; shift 4
  local out=$DIR/wrk-$server-$p-${name//[^a-z]/_}.txt
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$out" 2>&1 || true
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
  local p50ms p99ms vs=""
  p50ms=$(to_ms "$p50")
  p99ms=$(to_ms "$p99")
  local key=$name
  [ "$name" = "/partitions/key" ] && key=key
  [ "$name" = "/cluster" ] && key=cluster
  if [ "$server" = ckrun ] && [ -n "${GO_RPS[$key]:-}" ]; then
    vs=$(awk -v r="$rps" -v g="${GO_RPS[$key]}" -v p="$p99ms" -v gp="${GO_P99[$key]}" \
      'BEGIN { printf "%.2fx req/s (Go %d), p99 %.2f vs %.2f ms", r / g, g, p, gp }')
  fi
  printf "%-10s %-6s %-16s %12.0f %9s %9s %8s %8s  %s\n" \
    "$server" "$p" "$name" "$rps" "$p50ms" "$p99ms" "${non2xx:-0}" "${errs:-0}" "$vs"
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
    bench ckrun "$P" /partitions/key "http://$HTTP" -s "$WRK_KEYS"
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    echo "# perf: ckrun's CPU by DSO, then its top symbols, during the key-lookup run"
    perf report -i "$DIR/perf-$P.data" --no-children --sort dso -g none --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -8 | sed 's/^/#   /' || true
    perf report -i "$DIR/perf-$P.data" --no-children --sort dso,symbol -g none --percent-limit 1 \
      --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -15 | sed 's/^/#   /' || true
  else
    bench ckrun "$P" /partitions/key "http://$HTTP" -s "$WRK_KEYS"
  fi
  bench ckrun "$P" /health "http://$HTTP/health"
  bench ckrun "$P" /cluster "http://$HTTP/cluster"
  stop_pid "$NODE_PID"
done

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
  bench nginx - "fixed body" "http://127.0.0.1:$NPORT/"
  # The same body for the key-lookup URLs: shows what wrk itself reaches with
  # the key-rotating script, so that the script is not mistaken for the limit.
  bench nginx - "fixed, key URLs" "http://127.0.0.1:$NPORT" -s "$WRK_KEYS"
  stop_pid "$NGINX_PID"
else
  echo "# nginx is not installed: no ceiling measured"
fi
echo "# targets: /partitions/key >= 2x Go (129772 req/s) with p99 <= 2 ms; /cluster >= 3x Go (52350 req/s)"
