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
# The comparisons with nginx are made in ROUNDS rounds (default 3): every
# round measures the key lookup at the first partition count, the app route
# and nginx one after the other, with all three servers up, and the ratios are
# those of the medians (each round's req/s ratio is printed too). On a shared
# 2-core VM a single 10 s figure moves by 30% from one minute to the next;
# interleaved rounds keep the two sides of a ratio from landing in different
# weather.
#
# Everything runs on 127.0.0.1 and is stopped by PID. Total time is about
# 3 minutes with the defaults. Nothing here asserts timings: figures are printed.
#
# Environment: DURATION (10s), THREADS (2), CONNECTIONS (50), PARTITIONS
# ("64 4096"), ROUNDS (3), NGINX_WORKERS (1: one loop, like ckrun), PERF=1 to record a
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
ROUNDS=${ROUNDS:-3}
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

# Figures of this run, by "server P endpoint": req/s, p99 (ms), CPU µs/request,
# each a list with one value per round.
declare -A RPS=() P99=() CPU_US=()

median() { # values... -> the median (the lower middle one of an even count)
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR ? v[int((NR + 1) / 2)] : 0)}'
}
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
  RPS["$server $p $name"]+="$rps "
  P99["$server $p $name"]+="$p99ms "
  CPU_US["$server $p $name"]+="$cpu "
  printf "%-10s %-6s %-16s %12.0f %9s %9s %10s %8s %8s\n" \
    "$server" "$p" "$name" "$rps" "$p50ms" "$p99ms" "$cpu" "${non2xx:-0}" "${errs:-0}"
}

# nginx first, so that it is up for every round.
NGINX_PID=
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
else
  echo "# nginx is not installed: no ceiling measured, nothing to compare with"
fi

# An application route in Lua, on a node of its own (P=64).
APP_HTTP=127.0.0.1:$(port)
APP_RAFT=127.0.0.1:$(port)
NODE_ID=bench-app HTTP_ADDR=$APP_HTTP RAFT_ADDR=$APP_RAFT DATA_DIR=$DIR/data-app PARTITION_COUNT=64 \
  CK_LOG_LEVEL=warn "$CKRUN" tests/bench/app_route.lua 2>"$DIR/ckrun-app.log" &
APP_PID=$!
PIDS+=("$APP_PID")
wait_http "$APP_HTTP" /ready
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WRK_KEYS" "http://$APP_HTTP" -- 20000 /app/ >/dev/null 2>&1 || true
echo "# ckrun app_route.lua pid $APP_PID: GET /app/<key> answered by a Lua handler"

FIRST_P=${PARTITIONS%% *}
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
  rounds=1
  [ "$P" = "$FIRST_P" ] && rounds=$ROUNDS
  for r in $(seq 1 "$rounds"); do
    [ "$rounds" -gt 1 ] && echo "# round $r of $rounds"
    if [ "$PERF" = 1 ] && [ "$r" = 1 ] && command -v perf >/dev/null 2>&1; then
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
    if [ "$P" = "$FIRST_P" ]; then
      WRK_SCRIPT_ARGS="20000 /app/" bench ckrun 64 "app Lua route" "$APP_PID" "http://$APP_HTTP" -s "$WRK_KEYS"
      if [ -n "$NGINX_PID" ]; then bench nginx - "fixed body" "$NGINX_PID" "http://127.0.0.1:$NPORT/"; fi
    fi
  done
  bench ckrun "$P" /health "$NODE_PID" "http://$HTTP/health"
  bench ckrun "$P" /cluster "$NODE_PID" "http://$HTTP/cluster"
  stop_pid "$NODE_PID"
done
stop_pid "$APP_PID"

if [ -n "$NGINX_PID" ]; then
  # The same body for the key-lookup URLs: shows what wrk itself reaches with
  # the key-rotating script, so that the script is not mistaken for the limit.
  bench nginx - "fixed, key URLs" "$NGINX_PID" "http://127.0.0.1:$NPORT" -s "$WRK_KEYS"
  stop_pid "$NGINX_PID"
  # Side by side, this run only, medians over the rounds. The targets (issue
  # 13): /partitions/key at >= 1.0x nginx's fixed-body req/s, >= 0.8x its
  # requests per CPU-second and p99 <= 1.2x nginx's p99; the app route at
  # >= 0.73x nginx's req/s.
  n="nginx - fixed body"
  ratio_line() { # key label targets: ratios of the medians, and each round's req/s ratio
    local k=$1 label=$2 target=$3
    # shellcheck disable=SC2086
    awk -v l="$label" -v t="$target" -v r="$(median ${RPS[$k]})" -v nr="$(median ${RPS[$n]})" \
        -v c="$(median ${CPU_US[$k]})" -v nc="$(median ${CPU_US[$n]})" \
        -v q="$(median ${P99[$k]})" -v nq="$(median ${P99[$n]})" \
        -v rs="${RPS[$k]}" -v ns="${RPS[$n]}" 'BEGIN {
      printf "# same run, %s: %.2fx nginx req/s, %.2fx its requests per CPU-second, p99 %.2f ms vs %.2f ms (targets: %s)",
        l, r / nr, (c > 0 ? nc / c : 0), q, nq, t
      a = split(rs, x, " "); b = split(ns, y, " ")
      if (a > 1 && a == b) {
        printf "; req/s by round:"
        for (i = 1; i <= a; i++) printf " %.2fx", x[i] / y[i]
      }
      printf "\n" }'
  }
  for P in $PARTITIONS; do
    ratio_line "ckrun $P /partitions/key" "P=$P /partitions/key" ">= 1.0x req/s, >= 0.8x per CPU-second, p99 <= 1.2x"
  done
  ratio_line "ckrun 64 app Lua route" "the app Lua route" ">= 0.73x req/s"
fi
