#!/usr/bin/env bash
# The rock installs and loads: `luarocks make` the rockspec into a temporary
# tree (from a copy of the sources, so the checkout stays clean), then a plain
# luajit requires clusterkit from that tree and runs a one-node cluster, and
# the installed ckrun runs.
set -euo pipefail
SRC=$(realpath "${1:-.}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
(cd "$SRC" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src")
cd "$WORK/src"
luarocks --lua-version=5.1 --tree="$WORK/tree" make rocks/clusterkit-scm-1.rockspec \
  LUA_INCDIR="$(pkg-config --cflags-only-I luajit | sed -e "s/^ *-I//" -e "s/ .*//")" > "$WORK/build.log" 2>&1 || {
  tail -40 "$WORK/build.log"; exit 1; }
test -x "$WORK/tree/bin/ckrun"
"$WORK/tree/bin/ckrun" --version
test -x "$WORK/tree/bin/ckctl"
test -f "$WORK/tree/share/lua/5.1/resty/clusterkit.lua"
test -f "$WORK/tree/share/lua/5.1/clusterkit/client.lua"
"$WORK/tree/bin/ckctl" --help > /dev/null
cd "$WORK"
export LUA_PATH="$WORK/tree/share/lua/5.1/?.lua;$WORK/tree/share/lua/5.1/?/init.lua;;"
export LUA_CPATH="$WORK/tree/lib/lua/5.1/?.so;;"
luajit - <<'LUA'
local clusterkit = require "clusterkit"
assert(package.searchpath("clusterkit.core", package.cpath):find("/tree/", 1, true), "core.so not from the tree")
local ck = clusterkit.new {
  node_id = "rock", http_addr = "127.0.0.1:0", log_level = "warn",
  raft_addr = "127.0.0.1:" .. assert(clusterkit.free_port()),
  data_dir = os.getenv("PWD") .. "/data",
}
assert(ck:start())
assert(ck:is_leader())
assert(ck:primary_for_key("user:1").id == "rock")
local res = assert(clusterkit.http.request{url = "http://" .. ck.advertise_http .. "/health"})
assert(res.status == 200)
ck:stop()
print("rock ok: module and ckrun from the tree, one-node cluster served /health")
LUA
