#!/usr/bin/env bash
# Builds and tests clusterkit against OpenResty's LuaJIT (Debian's
# libluajit2-5.1-dev), next to the upstream one that the machine has
# installed. The two -dev packages conflict, so the OpenResty packages are
# downloaded and unpacked into a temporary root instead of installed, and the
# build finds them through PKG_CONFIG_PATH.
#
# The same root gets Debian's nginx with libnginx-mod-http-lua (which needs
# OpenResty's LuaJIT, so it cannot be installed beside the upstream one):
# after the suite, tests/flavours/test_resty.py runs resty.clusterkit and
# examples/openresty in that nginx against the nodes built here.
#   tests/flavours/openresty.sh [source-dir]
set -euo pipefail
SRC=$(realpath "${1:-.}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# nginx's workers run as nobody when the master is root: they must be able to
# read the Lua files copied here (mktemp makes the directory 0700).
chmod 755 "$WORK"
cd "$WORK"
PKGS="libluajit2-5.1-dev libluajit2-5.1-2 libluajit2-5.1-common luajit2
      nginx libnginx-mod-http-ndk libnginx-mod-http-lua lua-resty-core lua-resty-lrucache libpcre3"
apt-get download $PKGS >/dev/null 2>&1 || { apt-get update -qq && apt-get download $PKGS >/dev/null; }
for f in *.deb; do dpkg-deb -x "$f" root; done
PC=$(dirname "$(find root -name luajit.pc | head -1)")
sed -i "s|^prefix=/usr|prefix=$WORK/root/usr|" "$PC/luajit.pc"
LIB=$(dirname "$(find root -name 'libluajit-5.1.so.2' | head -1)")
mkdir src
(cd "$SRC" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src")
cd src
PKG_CONFIG_PATH="$WORK/$PC" cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
export LD_LIBRARY_PATH="$WORK/$LIB" PATH="$WORK/root/usr/bin:$PATH"
./build/ckrun -e 'assert(require("table.new"), "not OpenResty LuaJIT"); print("ckrun on " .. jit.version .. " (OpenResty)")'
cd build
ctest --output-on-failure -j"$(nproc)" -L 'unit|lua|cluster'
cd ..
R="$WORK/root"
NGINX_BIN="$R/usr/sbin/nginx" NGINX_MODULES="$R/usr/lib/nginx/modules" RESTY_LUA="$R/usr/share/lua/5.1" \
  CK_BUILD_DIR="$WORK/src/build" CK_SOURCE_DIR="$WORK/src" CK_REQUIRE_NGINX=1 \
  pytest-3 -q -p no:cacheprovider tests/flavours/test_resty.py
