"""resty.clusterkit and examples/openresty in a real nginx (Debian's
libnginx-mod-http-lua on OpenResty's LuaJIT), against real ckrun nodes
running examples/kv. tests/flavours/openresty.sh runs it with the unpacked
packages (NGINX_BIN, NGINX_MODULES, RESTY_LUA, LD_LIBRARY_PATH); without an
nginx that has the lua module it is skipped.

The cluster hashes with md5, so nginx routes through ngx.md5_bin
(clusterkit.hash's fnv1a64 path is covered against the vectors by
tests/lua/hash_spec.lua). Checked: nginx's table is the nodes' table key by
key; every /kv request reaches the key's primary directly; after kill -9 of
the node the front watches (a primary of some keys) nginx follows the new
table and every acknowledged write reads back through it.

Run: CK_BUILD_DIR=build CK_SOURCE_DIR=. NGINX_BIN=... pytest-3 -q -p no:cacheprovider tests/flavours/test_resty.py
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))

from ckharness import HOST, SOURCE_DIR, ck, free_port, http_request, use_tls_client  # noqa: E402,F401,F811  (ck: the fixture)
from ckcluster import Cluster, key_routes, wait_for  # noqa: E402

NGINX = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
MODULES = os.environ.get("NGINX_MODULES", "/usr/lib/nginx/modules")
RUN = os.path.join(SOURCE_DIR, "examples", "openresty", "run.sh")
KV_APP = os.path.join(SOURCE_DIR, "examples", "kv", "app.lua")
# Plain keys, and keys whose bytes need escaping in a path (a "%" must be
# decoded once, as examples/kv decodes it).
KEYS = ["user:%d" % i for i in range(48)] + ["pct%41", "pct%42", "pct%43", "p%25q", "sp ace", "sl/ash", "x{tag}y"]
WAIT = 30.0

HAVE_NGINX = os.access(NGINX, os.X_OK) and os.path.exists(os.path.join(MODULES, "ngx_http_lua_module.so"))
if os.environ.get("CK_REQUIRE_NGINX") and not HAVE_NGINX:
    # openresty.sh unpacked them: a skip there would hide a broken job.
    raise RuntimeError("CK_REQUIRE_NGINX is set but %s or %s/ngx_http_lua_module.so is missing" % (NGINX, MODULES))
pytestmark = pytest.mark.skipif(not HAVE_NGINX,
                                reason="no nginx with the lua module (tests/flavours/openresty.sh provides one)")


class Front:
    def __init__(self, tmp_path, ck_addr, tls_ca=None, tls_name=None):
        self.port = free_port()
        self.prefix = os.path.join(str(tmp_path), "nginx-%d" % self.port)
        self.log = open(self.prefix + ".out", "w")
        env = dict(os.environ, NGINX_BIN=NGINX, NGINX_MODULES=MODULES)
        env.pop("NGINX", None)  # nginx reads NGINX as inherited sockets
        if tls_ca:
            env["CK_TLS_CA"] = tls_ca
        if tls_name:
            env["CK_TLS_NAME"] = tls_name
        self.proc = subprocess.Popen([RUN, self.prefix, "%s:%d" % (HOST, self.port), ck_addr], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def url(self, path):
        return "http://%s:%d%s" % (HOST, self.port, path)

    def request(self, method, path, body=None):
        return http_request(method, self.url(path), body=body, timeout=15)

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "error.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def alive(self):
        assert self.proc.poll() is None, "nginx exited %s:\n%s" % (self.proc.returncode, self.error_log())
        return True

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)  # nginx's graceful stop
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def front(tmp_path):
    made = []

    def make(addr, **kw):
        f = Front(tmp_path, addr, **kw)
        made.append(f)
        FRONTS.append(f)
        return f
    yield make
    for f in made:
        f.stop()


LAST = [None]  # why the last comparison failed, for the failure message
FRONTS = []    # the fronts started, for the failure message


class Why:
    """A wait_for `what` that names the last mismatch when it is printed."""

    def __init__(self, what):
        self.what = what

    def __str__(self):
        log = FRONTS[-1].error_log() if FRONTS else ""
        return "%s (last mismatch: %r)\nnginx error.log:\n%s" % (self.what, LAST[0], log)


def front_agrees(f, node):
    f.alive()
    t = key_routes(node, KEYS)
    if not t:
        return False
    index, routes = t
    for k in KEYS:
        try:
            r = f.request("GET", "/route?key=" + urllib.parse.quote(k))
        except OSError:
            return False
        if r.status != 200:
            LAST[0] = ("status", r.status, r.body)
            return False
        j = json.loads(r.body)
        if j["state_index"] != index or j["owners"] != routes[k]:
            LAST[0] = (k, j, index, routes[k])
            return False
    return routes


def test_nginx_routes_each_key_to_its_primary_and_follows_a_kill(ck, front):
    c = Cluster(ck, env={"REPLICATION_FACTOR": "2", "PARTITION_COUNT": "16", "REBALANCE_DELAY": "1",
                         "HASH_ALGORITHM": "md5"}, args=[KV_APP])
    n1, n2, n3 = c.start(3)
    c.wait_converged()
    f = front(n1.http_addr)
    routes = wait_for(lambda: front_agrees(f, n1), WAIT, what=Why("nginx's table to match n1's"))

    acked = {}
    for i, k in enumerate(KEYS):
        r = f.request("PUT", "/kv/" + urllib.parse.quote(k, safe=""), body=b"v%d" % i)
        assert r.status == 200, (k, r.status, r.body, f.error_log())
        acked[k] = b"v%d" % i
        g = f.request("GET", "/kv/" + urllib.parse.quote(k, safe=""))
        assert g.status == 200 and g.body == acked[k], (k, g.status, g.body)
        # Straight to the primary: nginx picked it, and it served.
        assert g.headers["X-CK-Routed-To"] == routes[k][0], (k, g.headers, routes[k])
        assert g.headers["X-KV-Served-By"] == routes[k][0], (k, g.headers, routes[k])

    # kill -9 the node nginx watches; it primaries some keys.
    assert any(owners[0] == "n1" for owners in routes.values())
    n1.kill9()
    routes = wait_for(lambda: (lambda r: r if r and not any("n1" in o for o in r.values()) else None)(
        front_agrees(f, n2)), 60, what=Why("nginx to follow n1's partitions to the survivors"))
    for i, k in enumerate(KEYS):
        g = f.request("GET", "/kv/" + urllib.parse.quote(k, safe=""))
        assert g.status == 200 and g.body == acked[k], (k, g.status, g.body, f.error_log())
        assert g.headers["X-CK-Routed-To"] == routes[k][0], (k, g.headers, routes[k])
        assert g.headers["X-KV-Served-By"] == routes[k][0], (k, g.headers, routes[k])
        r = f.request("PUT", "/kv/" + urllib.parse.quote(k, safe=""), body=b"w%d" % i)
        assert r.status == 200, (k, r.status, r.body)
    f.alive()


@pytest.fixture(scope="module")
def certs():
    """The test CA and certificates, in a directory of their own outside
    pytest's (0700) tmp: nginx's workers run as nobody when the master is
    root, and they load lua_ssl_trusted_certificate themselves."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tempfile.mkdtemp(prefix="ck-resty-certs-")
    try:
        os.chmod(d, 0o755)
        subprocess.run(["sh", os.path.join(SOURCE_DIR, "tests", "tls", "mkcerts.sh"), d], check=True)
        for name in ("ca.pem", "rogue-ca.pem"):
            os.chmod(os.path.join(d, name), 0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_nginx_follows_and_proxies_an_https_cluster(ck, front, certs):
    """resty.clusterkit over HTTPS: the cosocket handshake verifies the nodes' certificates with lua_ssl_trusted_certificate against CK_TLS_NAME (the nodes are reached by IP), nginx follows the table and proxies /kv over TLS to each key's primary; a front that trusts another CA never gets a table."""
    ca = os.path.join(certs, "ca.pem")
    use_tls_client(ca, os.path.join(certs, "client.pem"), os.path.join(certs, "client.key"))
    try:
        env = {"REPLICATION_FACTOR": "2", "PARTITION_COUNT": "16", "REBALANCE_DELAY": "1",
               "HASH_ALGORITHM": "md5", "TLS_CERT": os.path.join(certs, "node.pem"),
               "TLS_KEY": os.path.join(certs, "node.key"), "TLS_CA": ca}
        c = Cluster(ck, env=env, args=[KV_APP])
        n1, n2, n3 = c.start(3)
        c.wait_converged()
        assert n1.url.startswith("https://"), n1.url
        f = front("https://" + n1.http_addr, tls_ca=ca, tls_name="localhost")
        routes = wait_for(lambda: front_agrees(f, n1), WAIT, what=Why("nginx's table (over HTTPS) to match n1's"))
        for i, k in enumerate(KEYS[:16]):
            q = "/kv/" + urllib.parse.quote(k, safe="")

            def put():
                r = f.request("PUT", q, body=b"s%d" % i)
                if r.status == 503 and b"SYNCING" in r.body:
                    return False  # A new owner still copying the partition (examples/kv).
                assert r.status == 200, (k, r.status, r.body, f.error_log())
                return True
            wait_for(put, WAIT, what="the write of %r through nginx" % k)
            g = f.request("GET", q)
            assert g.status == 200 and g.body == b"s%d" % i, (k, g.status, g.body)
            assert g.headers["X-KV-Served-By"] == routes[k][0], (k, g.headers, routes[k])

        # Another CA: every handshake fails verification, so no table ever.
        bad = front("https://" + n1.http_addr, tls_ca=os.path.join(certs, "rogue-ca.pem"), tls_name="localhost")
        wait_for(lambda: bad.alive() and "lua ssl certificate verify error" in bad.error_log(), WAIT,
                 what="the front that trusts another CA to log its failed handshakes")
        r = bad.request("GET", "/route?key=user:1")
        assert r.status == 503 and b"NOT_READY" in r.body, (r.status, r.body)
        f.alive()
    finally:
        use_tls_client(None)
