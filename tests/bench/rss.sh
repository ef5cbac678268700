#!/usr/bin/env bash
# Idle RSS of a running ckrun node (and of each node of a 3-node cluster),
# read from /proc after the node has been ready and idle for a moment.
set -euo pipefail
BUILD=${1:-build}
CKRUN=$(realpath "$BUILD/ckrun")
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
port() { "$CKRUN" -e 'print(require("clusterkit").free_port())'; }
wait_ready() { # bounded: 100 x 0.1 s
  for _ in $(seq 1 100); do
    "$CKRUN" -e "local r = require('clusterkit').http.request{url='http://$1/ready', timeout=1}
                 os.exit(r and r.status == 200 and 0 or 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node $1 not ready" >&2; return 1
}
start() { # id http raft join
  NODE_ID=$1 HTTP_ADDR=$2 RAFT_ADDR=$3 JOIN_ADDR=${4:-} DATA_DIR=$DIR/$1 CK_LOG_LEVEL=warn \
    "$CKRUN" 2>"$DIR/$1.log" & PIDS+=($!)
}
rss_kb() { awk '/VmRSS/ {print $2}' /proc/$1/status; }

H1=127.0.0.1:$(port); R1=127.0.0.1:$(port)
start n1 "$H1" "$R1"
wait_ready "$H1"
sleep 1
echo "idle RSS, single node: $(rss_kb "${PIDS[0]}") kB"
for i in 2 3; do start n$i 127.0.0.1:$(port) 127.0.0.1:$(port) "$H1"; done
sleep 3
for i in 0 1 2; do echo "idle RSS, 3-node cluster, node $((i+1)): $(rss_kb "${PIDS[$i]}") kB"; done
