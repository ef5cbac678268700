#!/usr/bin/env bash
# Runs every benchmark and prints its figures. Nothing here asserts timings.
#   tests/bench/run.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
echo "== C: key -> partition (tests/bench/bench_lookup.c)"
"$BUILD/tests/bench_lookup"
echo "== Lua: lookups on a started node (tests/bench/lookup.lua)"
"$BUILD/ckrun" tests/bench/lookup.lua
echo "== Lua: the HTTP request path without sockets (tests/bench/http_dispatch.lua)"
"$BUILD/ckrun" tests/bench/http_dispatch.lua
echo "== Lua: what one commit costs every node, N = 10..1000 (tests/bench/commit_cost.lua)"
"$BUILD/ckrun" tests/bench/commit_cost.lua
echo "== Lua/C: what planning a rebalance costs the leader, Lua path vs one call (tests/bench/plan_cost.lua)"
"$BUILD/ckrun" tests/bench/plan_cost.lua
echo "== the control plane at N = 100 and 1000 on a fake clock (tests/bench/sim_control_plane.lua)"
"$BUILD/ckrun" tests/bench/sim_control_plane.lua
echo "== placement through the Lua policy interface (tests/bench/place_lua.lua)"
"$BUILD/ckrun" tests/bench/place_lua.lua
for b in "$BUILD"/tests/bench_place; do
  [ -x "$b" ] || continue
  echo "== placement in C ($b)"
  "$b"
done
echo "== idle memory (tests/bench/rss.sh)"
tests/bench/rss.sh "$BUILD"
for b in tests/bench/http_bench.sh; do
  [ -x "$b" ] || continue
  echo "== $b"
  "$b" "$BUILD"
done
for b in tests/bench/cluster_*.py tests/bench/kv_bench.py tests/bench/client_bench.py; do
  [ -e "$b" ] || continue
  echo "== $b"
  CK_BUILD_DIR="$BUILD" python3 "$b"
done
