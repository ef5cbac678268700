#!/usr/bin/env bash
# The cost of HTTPS beside plain HTTP on the C core's HTTP server, same run:
# tests/cluster/tls_server.lua (one JSON answer per request, no router) served
# twice, plain and with TLS (certificates from tests/tls/mkcerts.sh, P-256,
# TLS 1.3), each loaded by wrk over keep-alive connections; also new
# connections (a handshake each) with wrk -H "Connection: close".
#
#   tests/bench/https_bench.sh BUILD_DIR [SECONDS]
set -euo pipefail
BUILD=$(cd "${1:-build}" && pwd)
SECS=${2:-5}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
command -v wrk >/dev/null || { echo "https_bench: wrk is not installed (make bench-deps)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/ck-https-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
sh "$SRC/tests/tls/mkcerts.sh" "$TMP/certs"

serve() { # tls_off var: starts a server, sets $var to its port
  local out="$TMP/srv$1.out"
  TLS_OFF=$1 TLS_CERT="$TMP/certs/node.pem" TLS_KEY="$TMP/certs/node.key" \
    LUA_PATH="$SRC/lua/?.lua;$SRC/lua/?/init.lua;;" LUA_CPATH="$BUILD/?.so;;" \
    luajit "$SRC/tests/cluster/tls_server.lua" >"$out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 200); do
    if grep -q '^port ' "$out" 2>/dev/null; then
      printf -v "$2" '%s' "$(awk '/^port /{print $2; exit}' "$out")"
      return
    fi
    sleep 0.05
  done
  echo "https_bench: the server did not start: $(cat "$out")" >&2
  exit 1
}
serve 1 PLAIN
serve 0 TLS
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # label url pid [wrk args...]
  local label=$1 url=$2 pid=$3; shift 3
  local c0 c1 out
  c0=$(cpu_of "$pid")
  out=$(wrk -t2 -c50 -d"${SECS}s" --latency "$@" "$url")
  c1=$(cpu_of "$pid")
  local rps p99 reqs
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%-28s %10s req/s  p99 %8s  server CPU %6.1f us/request\n' "$label" "$rps" "$p99" \
    "$(awk -v a="$c0" -v b="$c1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {print (b - a) * 1e6 / hz / n}')"
}
echo "wrk -t2 -c50 -d${SECS}s, one process each, same run:"
run "http keep-alive" "http://127.0.0.1:$PLAIN/x" "${PIDS[0]}"
run "https keep-alive" "https://127.0.0.1:$TLS/x" "${PIDS[1]}"
run "http new connection each" "http://127.0.0.1:$PLAIN/x" "${PIDS[0]}" -H "Connection: close"
run "https new connection each" "https://127.0.0.1:$TLS/x" "${PIDS[1]}" -H "Connection: close"
