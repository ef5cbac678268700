#!/usr/bin/env bash
# Runs the nginx front in the foreground (exec: the PID is nginx's).
#   examples/openresty/run.sh PREFIX LISTEN CK_ADDR
#     PREFIX   a directory for the filled-in nginx.conf, logs and temp files
#     LISTEN   host:port to serve on, e.g. 127.0.0.1:8088
#     CK_ADDR  HTTP addresses of cluster members, comma-separated
# Environment: NGINX_BIN (the binary, default nginx; not NGINX: nginx reads that one as inherited sockets), NGINX_MODULES (default
# /usr/lib/nginx/modules), RESTY_LUA (lua-resty-core's directory, default
# /usr/share/lua/5.1), CK_LUA (clusterkit's Lua directory, default the
# checkout's lua/).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 PREFIX LISTEN CK_ADDR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mkdir -p "$1" && cd "$1" && pwd)
mkdir -p "$prefix/body" "$prefix/proxy" "$prefix/fastcgi" "$prefix/uwsgi" "$prefix/scgi"
sed -e "s|@MODULES@|${NGINX_MODULES:-/usr/lib/nginx/modules}|g" -e "s|@PREFIX@|$prefix|g" \
    -e "s|@HERE@|$here|g" -e "s|@LUA_DIR@|${CK_LUA:-$here/../../lua}|g" \
    -e "s|@RESTY_LUA@|${RESTY_LUA:-/usr/share/lua/5.1}|g" -e "s|@LISTEN@|$2|g" -e "s|@CK_ADDR@|$3|g" \
    "$here/nginx.conf" > "$prefix/nginx.conf"
exec "${NGINX_BIN:-nginx}" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
