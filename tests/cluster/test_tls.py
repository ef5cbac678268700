"""HTTPS on the C core's HTTP server (issue 13, item 3, first slice): a real
luajit process serving tls_server.lua, real TLS clients (Python's ssl module,
and curl when installed), certificates made at test time by
tests/tls/mkcerts.sh with the openssl command.

Covered: HTTPS requests and keep-alive; plain HTTP refused on the TLS port;
mutual TLS (no client certificate, one from another CA, one from the CA);
an expired certificate refused at start with a message naming the file and
the date; SIGHUP reloading the certificate for new connections, and a bad
reload keeping the old one.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q test_tls.py
"""

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

SRC = os.path.abspath(os.environ.get("CK_SOURCE_DIR", "../.."))
BUILD = os.path.abspath(os.environ.get("CK_BUILD_DIR", "../../build"))
LUAJIT = os.environ.get("CK_LUAJIT") or shutil.which("luajit")
BOUND = 20.0  # seconds: an upper bound for anything to happen, not an expectation

pytestmark = pytest.mark.skipif(LUAJIT is None or shutil.which("openssl") is None,
                                reason="needs luajit and the openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    subprocess.run(["sh", os.path.join(SRC, "tests/tls/mkcerts.sh"), d], check=True)
    return d


class Server:
    def __init__(self, certs, tmp, cert="node", verify=False, ca=True):
        self.certs = certs
        self.env = dict(os.environ)
        self.env.update({
            "LUA_PATH": "%s/lua/?.lua;%s/lua/?/init.lua;;" % (SRC, SRC),
            "LUA_CPATH": "%s/?.so;;" % BUILD,
            "TLS_CERT": os.path.join(certs, cert + ".pem"),
            "TLS_KEY": os.path.join(certs, cert + ".key"),
            "TLS_VERIFY_PEERS": "true" if verify else "false",
        })
        if ca:
            self.env["TLS_CA"] = os.path.join(certs, "ca.pem")
        if os.environ.get("CK_PRELOAD"):
            self.env["LD_PRELOAD"] = os.environ["CK_PRELOAD"]
            self.env["ASAN_OPTIONS"] = "detect_leaks=0"
        self.out_path = os.path.join(str(tmp), "server.out")
        self.err_path = os.path.join(str(tmp), "server.err")
        self.proc = subprocess.Popen([LUAJIT, os.path.join(SRC, "tests/cluster/tls_server.lua")], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=open(self.out_path, "wb"),
                                     stderr=open(self.err_path, "wb"), start_new_session=True)
        self.port = None

    def lines(self):
        with open(self.out_path) as f:
            return f.read().splitlines()

    def wait_line(self, prefix):
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                raise AssertionError("server exited %s: %s" % (self.proc.returncode, self.stderr()))
            time.sleep(0.02)
        raise AssertionError("no line %r from the server: %s" % (prefix, self.lines()))

    def start(self):
        words = self.wait_line("port ").split()
        self.port, self.serial = int(words[1]), words[3]
        return self

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(BOUND)
        return self.proc.returncode


@pytest.fixture
def servers(certs, tmp_path):
    made = []

    def make(**kw):
        s = Server(certs, tmp_path, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def client_ctx(certs, cert=None):
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    if cert:
        ctx.load_cert_chain(os.path.join(certs, cert + ".pem"), os.path.join(certs, cert + ".key"))
    return ctx


def get(port, ctx, path="/x", host="127.0.0.1"):
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=BOUND)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read(), c.sock.getpeercert()
    finally:
        c.close()


def test_https_requests_and_keep_alive(servers, certs):
    s = servers().start()
    status, body, cert = get(s.port, client_ctx(certs), "/hello")
    assert status == 200 and body == b'{"path":"/hello"}'
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert get(s.port, client_ctx(certs), "/n", host="localhost")[0] == 200
    # Several requests on one TLS connection, bodies over one record.
    c = http.client.HTTPSConnection("127.0.0.1", s.port, context=client_ctx(certs), timeout=BOUND)
    for i in range(20):
        c.request("POST", "/k%d" % i, body=b"v" * 40000)
        r = c.getresponse()
        assert r.status == 200 and r.read() == ('{"path":"/k%d"}' % i).encode()
    c.close()
    s.stop()
    assert "handshakes 3 failures 0" in s.wait_line("stats ")


def test_plain_http_to_the_tls_port_gets_nothing_served(servers, certs):
    s = servers().start()
    with socket.create_connection(("127.0.0.1", s.port), timeout=BOUND) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"HTTP/1.1 200" not in data  # At most a TLS alert, then the close.
    s.stop()
    assert "failures 1" in s.wait_line("stats ")


def test_mutual_tls(servers, certs):
    s = servers(verify=True).start()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(s.port, client_ctx(certs))          # no client certificate
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(s.port, client_ctx(certs, "rogue"))  # one from another CA
    assert get(s.port, client_ctx(certs, "client"))[0] == 200
    s.stop()
    line = s.wait_line("stats ")
    assert "handshakes 1 failures 2" in line
    assert "certificate" in line  # The last refusal's reason, from OpenSSL.


def test_server_certificate_is_verified_by_the_client(servers, certs):
    s = servers(cert="rogue").start()
    with pytest.raises(ssl.SSLCertVerificationError):
        get(s.port, client_ctx(certs))


def test_expired_certificate_refused_with_a_clear_message(servers, certs):
    s = servers(cert="expired")
    assert s.proc.wait(BOUND) == 2
    err = s.stderr()
    assert "TLS_CERT" in err and "expired.pem" in err and "expired on" in err


def test_sighup_reloads_the_certificate(servers, certs):
    s = servers().start()
    _, _, before = get(s.port, client_ctx(certs))
    # A bad file first: the reload fails with the reason and the old
    # certificate keeps serving.
    os.rename(os.path.join(certs, "node.pem"), os.path.join(certs, "node.pem.bak"))
    try:
        s.proc.send_signal(signal.SIGHUP)
        assert "No such file" in s.wait_line("reload failed: ")
    finally:
        os.rename(os.path.join(certs, "node.pem.bak"), os.path.join(certs, "node.pem"))
    assert get(s.port, client_ctx(certs))[2]["serialNumber"] == before["serialNumber"]
    # Then node2's certificate under TLS_CERT's name: new connections get it.
    for ext in ("pem", "key"):
        shutil.copy(os.path.join(certs, "node.%s" % ext), os.path.join(certs, "node.%s.orig" % ext))
        shutil.copy(os.path.join(certs, "node2.%s" % ext), os.path.join(certs, "node.%s" % ext))
    try:
        s.proc.send_signal(signal.SIGHUP)
        new_serial = s.wait_line("reloaded ").split()[1]
        _, _, after = get(s.port, client_ctx(certs))
        assert after["serialNumber"] != before["serialNumber"]
        assert after["serialNumber"].lstrip("0") == new_serial.lstrip("0")
    finally:
        for ext in ("pem", "key"):
            os.replace(os.path.join(certs, "node.%s.orig" % ext), os.path.join(certs, "node.%s" % ext))


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_speaks_to_it(servers, certs):
    s = servers(verify=True).start()
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", os.path.join(certs, "ca.pem"),
                          "--cert", os.path.join(certs, "client.pem"), "--key", os.path.join(certs, "client.key"),
                          "https://localhost:%d/curl" % s.port], capture_output=True, timeout=BOUND)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b'{"path":"/curl"}'
