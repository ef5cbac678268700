#!/usr/bin/env bash
# The rock as users get it (make test-rock). Shows that `luarocks make` from
# the checkout installs into a temporary tree and leaves the checkout's git
# status as it was; that the tree's ckrun and ckctl run a one-node cluster
# and query it; that a plain luajit loads clusterkit and core.so from the tree
# through `luarocks path` and runs a node; and that the release rock which
# rocks/release.sh writes for a tag (a throwaway tag in a temporary clone,
# never in this repository) installs from its source rock.
#
# Offline: LuaRocks is given no servers, and Debian's lua-cjson is declared
# provided (rocks_provided), as README tells users of Debian's package; a
# dependency left unsatisfied fails instead of downloading.
#   tests/rock/run.sh [checkout]
set -euo pipefail
SRC=$(realpath "${1:-.}")
W=$(mktemp -d)
NODE_PID=
cleanup() {
  if [ -n "$NODE_PID" ]; then kill -KILL "$NODE_PID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
fail() { echo "tests/rock: FAIL: $*" >&2; exit 1; }
step() { echo "tests/rock: $* ($((SECONDS - started)) s)"; }
started=$SECONDS

cjson=$(dpkg-query -W -f='${Version}' lua-cjson 2>/dev/null | sed 's/[+~-].*//' || true)
[ -n "$cjson" ] || fail "Debian's lua-cjson is not installed (make deps)"
version=$(sed -n 's/^project(clusterkit VERSION \([0-9.]*\).*/\1/p' "$SRC/CMakeLists.txt")
[ -n "$version" ] || fail "no project VERSION in CMakeLists.txt"
mkdir "$W/tmp" "$W/no-server"
# The only rocks server is an empty local directory (an empty list would
# leave LuaRocks' defaults in place).
cat > "$W/config.lua" <<EOF
rocks_servers = { "$W/no-server" }
rocks_provided = { ["lua-cjson"] = "$cjson-1" }
EOF
# TMPDIR: rocks/build.sh's build tree goes there, and must be gone after.
export LUAROCKS_CONFIG="$W/config.lua" TMPDIR="$W/tmp"
LR=(luarocks --lua-version=5.1)
# LUA_INCDIR only satisfies LuaRocks' own check for Lua headers (the build
# takes LuaJIT from pkg-config); Debian keeps llhttp.h where LuaRocks does
# not look.
VARS=("LUA_INCDIR=$(pkg-config --variable=includedir luajit)")
if [ -f /usr/share/include/llhttp/llhttp.h ]; then
  VARS+=(LLHTTP_INCDIR=/usr/share/include/llhttp)
fi

# --- luarocks make in the checkout ------------------------------------------
cd "$SRC"
"${LR[@]}" lint rocks/clusterkit-scm-1.rockspec || fail "luarocks lint rocks/clusterkit-scm-1.rockspec"
git status --porcelain --ignored > "$W/status.before" || fail "$SRC is not a git checkout"
"${LR[@]}" --tree="$W/tree" make rocks/clusterkit-scm-1.rockspec "${VARS[@]}" > "$W/make.log" 2>&1 ||
  { tail -40 "$W/make.log"; fail "luarocks make"; }
git status --porcelain --ignored > "$W/status.after"
diff -u "$W/status.before" "$W/status.after" ||
  fail "luarocks make changed the checkout's git status (diff above)"
[ -z "$(ls -A "$W/tmp")" ] || fail "left behind in TMPDIR: $(ls -A "$W/tmp")"
step "luarocks make: installed, checkout unchanged"

T="$W/tree"
"${LR[@]}" --tree="$T" show clusterkit > "$W/show.txt" || fail "luarocks show clusterkit"
grep -q "lua-cjson" "$W/show.txt" || { cat "$W/show.txt"; fail "the rock does not depend on lua-cjson"; }
for f in bin/ckrun bin/ckctl lib/lua/5.1/clusterkit/core.so share/lua/5.1/clusterkit/init.lua \
         share/lua/5.1/clusterkit/ckctl.lua share/lua/5.1/resty/clusterkit.lua; do
  [ -f "$T/$f" ] || fail "$f is not in the tree"
done
"$T/bin/ckrun" --version > "$W/version.txt" || fail "ckrun --version"
grep -qx "ckrun (clusterkit) $version" "$W/version.txt" || fail "ckrun --version said: $(cat "$W/version.txt")"
"$T/bin/ckctl" --help > /dev/null || fail "ckctl --help"

# --- the tree's ckrun runs a node, its ckctl and a client query it ----------
cd "$W"
raft_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
NODE_ID=rock HTTP_ADDR=127.0.0.1:0 RAFT_ADDR="127.0.0.1:$raft_port" DATA_DIR="$W/data" \
  "$T/bin/ckrun" > "$W/node.log" 2>&1 &
NODE_PID=$!
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/.* started: http \([0-9.]*:[0-9]*\),.*/\1/p' "$W/node.log")
  [ -n "$addr" ] && break
  kill -0 "$NODE_PID" 2>/dev/null || { cat "$W/node.log"; fail "ckrun exited before it started"; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$W/node.log"; fail "ckrun did not start within 10 s"; }
python3 - "$addr" <<'PY' || fail "GET /health"
import json, sys, time, urllib.request
for _ in range(50):
    try:
        with urllib.request.urlopen("http://%s/health" % sys.argv[1], timeout=2) as r:
            body = json.load(r)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no answer from /health")
assert body.get("status") == "healthy" and body.get("node_id") == "rock", body
PY
"$T/bin/ckctl" --addr "$addr" status > "$W/status.txt" || { cat "$W/status.txt"; fail "ckctl status"; }
grep -Eq '^leader +rock' "$W/status.txt" || { cat "$W/status.txt"; fail "ckctl status names no leader"; }
kill -TERM "$NODE_PID"
for _ in $(seq 100); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$NODE_PID" 2>/dev/null; then
  cat "$W/node.log"; fail "ckrun still running 10 s after SIGTERM"
fi
rc=0; wait "$NODE_PID" || rc=$?
NODE_PID=
[ "$rc" = 0 ] || { cat "$W/node.log"; fail "ckrun exited with $rc after SIGTERM"; }
step "ckrun served /health, ckctl status named the leader, SIGTERM stopped it"

# --- a plain luajit, with the paths `luarocks path` gives --------------------
(
  eval "$("${LR[@]}" --tree="$T" path)"
  TREE=$T luajit - <<'LUA'
local tree = os.getenv("TREE") .. "/"
local clusterkit = require "clusterkit"
local function from_tree(name, path)
  local file = assert(package.searchpath(name, path), name .. " not found")
  assert(file:sub(1, #tree) == tree, name .. " comes from " .. file .. ", not the tree")
end
from_tree("clusterkit", package.path)
from_tree("clusterkit.core", package.cpath)
assert(package.loaded["clusterkit.core"], "clusterkit.core not loaded")
local ck = clusterkit.new {
  node_id = "rock", http_addr = "127.0.0.1:0", log_level = "warn",
  raft_addr = "127.0.0.1:" .. assert(clusterkit.free_port()),
  data_dir = os.getenv("PWD") .. "/luajit-data",
}
assert(ck:start())
assert(ck:is_leader())
assert(ck:primary_for_key("user:1").id == "rock")
local res = assert(clusterkit.http.request{url = "http://" .. ck.advertise_http .. "/health"})
assert(res.status == 200, res.status)
ck:stop()
LUA
) || fail "luajit with the tree's LUA_PATH and LUA_CPATH"
step "luajit loaded clusterkit and core.so from the tree and ran a node"

# --- the release rock --------------------------------------------------------
git clone -q --bare "$SRC" "$W/repo.git"
git -C "$W/repo.git" tag -f "v$version" HEAD > /dev/null
"$SRC/rocks/release.sh" "git+file://$W/repo.git" "v$version" "$W/out" > "$W/release.log" 2>&1 ||
  { cat "$W/release.log"; fail "rocks/release.sh"; }
rockspec="$W/out/clusterkit-$version-1.rockspec"
if ! grep -qx "  url = \"git+file://$W/repo.git\"," "$rockspec" || ! grep -qx "  tag = \"v$version\"," "$rockspec"; then
  cat "$rockspec"; fail "the release rockspec's source is not the URL and tag"
fi
"${LR[@]}" --tree="$W/tree2" install "$W/out/clusterkit-$version-1.src.rock" "${VARS[@]}" \
  > "$W/install.log" 2>&1 || { tail -40 "$W/install.log"; fail "luarocks install of the source rock"; }
[ -x "$W/tree2/bin/ckctl" ] || fail "the release rock has no ckctl"
"$W/tree2/bin/ckrun" --version | grep -qx "ckrun (clusterkit) $version" || fail "the release rock's ckrun --version"
"${LR[@]}" --tree="$W/tree2" list --porcelain | grep -q "^clusterkit	$version-1	installed" ||
  fail "luarocks list shows no clusterkit $version-1"
[ -z "$(ls -A "$W/tmp")" ] || fail "left behind in TMPDIR: $(ls -A "$W/tmp")"
step "release rock clusterkit-$version-1 (url and tag) packed and installed"
echo "tests/rock: ok ($((SECONDS - started)) s)"
