#!/usr/bin/env bash
# Runs the nginx front in the foreground (exec: the PID is nginx's).
#   examples/openresty/run.sh PREFIX LISTEN CK_ADDR
#     PREFIX   a directory for the filled-in nginx.conf, logs and temp files
#     LISTEN   host:port to serve on, e.g. 127.0.0.1:8088
#     CK_ADDR  HTTP addresses of cluster members, comma-separated
#              (https://host:port,... for a cluster that serves HTTPS)
# Environment: NGINX_BIN (the binary, default nginx; not NGINX: nginx reads that one as inherited sockets), NGINX_MODULES (default
# /usr/lib/nginx/modules), RESTY_LUA (lua-resty-core's directory, default
# /usr/share/lua/5.1), CK_LUA (clusterkit's Lua directory, default the
# checkout's lua/). For HTTPS: CK_TLS_CA (the CA file that signs the nodes'
# certificates: the watch and the proxied requests verify against it) and
# CK_TLS_NAME (the name the certificates must carry, default localhost: nginx
# checks DNS names, not IP addresses). nginx's workers load the CA file: when
# the master runs as root they are nobody, and must be able to read it.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 PREFIX LISTEN CK_ADDR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mkdir -p "$1" && cd "$1" && pwd)
mkdir -p "$prefix/body" "$prefix/proxy" "$prefix/fastcgi" "$prefix/uwsgi" "$prefix/scgi"
tls_client="" tls_proxy="" tls_name="" scheme=http
if [ -n "${CK_TLS_CA:-}" ]; then
  [ -r "$CK_TLS_CA" ] || { echo "$0: CK_TLS_CA=$CK_TLS_CA is not a readable file" >&2; exit 2; }
  tls_name=${CK_TLS_NAME:-localhost}
  scheme=https
  tls_client="lua_ssl_trusted_certificate $CK_TLS_CA; lua_ssl_verify_depth 3;"
  tls_proxy="proxy_ssl_trusted_certificate $CK_TLS_CA; proxy_ssl_verify on; proxy_ssl_verify_depth 3; proxy_ssl_name $tls_name; proxy_ssl_server_name on; proxy_ssl_session_reuse on;"
fi
sed -e "s|@MODULES@|${NGINX_MODULES:-/usr/lib/nginx/modules}|g" -e "s|@PREFIX@|$prefix|g" \
    -e "s|@HERE@|$here|g" -e "s|@LUA_DIR@|${CK_LUA:-$here/../../lua}|g" \
    -e "s|@RESTY_LUA@|${RESTY_LUA:-/usr/share/lua/5.1}|g" -e "s|@LISTEN@|$2|g" -e "s|@CK_ADDR@|$3|g" \
    -e "s|@TLS_CLIENT@|$tls_client|g" -e "s|@TLS_PROXY@|$tls_proxy|g" -e "s|@TLS_NAME@|$tls_name|g" \
    -e "s|@UPSTREAM_SCHEME@|$scheme|g" \
    "$here/nginx.conf" > "$prefix/nginx.conf"
exec "${NGINX_BIN:-nginx}" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
