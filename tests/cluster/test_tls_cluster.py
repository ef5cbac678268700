"""TLS for whole nodes (issue 13, item 3): TLS_CERT, TLS_KEY, TLS_CA and
TLS_VERIFY_PEERS turn on HTTPS and raft over TLS together, with mutual TLS
on both; certificates are reloaded on SIGHUP. Real ckrun processes, real
TLS clients (Python's ssl), certificates made at test time by
tests/tls/mkcerts.sh with the openssl command.

Covered: a 3-node cluster forms with every HTTP call between nodes (joins,
heartbeats) over HTTPS and raft over TLS (its port answers a TLS handshake
with the node's certificate); plain HTTP and a client without a certificate
are refused; a node with a certificate from another CA cannot join; the
leader killed with SIGKILL is replaced over TLS; SIGHUP serves a new
certificate on HTTP and raft, a broken reload keeps the old one, and a node
joins through the reloaded node; an expired certificate stops ckrun at
start with a message naming the file.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_tls_cluster.py
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess

import pytest

from ckharness import BUILD_DIR, CKRUN, HOST, ck, metric, use_tls_client  # noqa: F401  (ck: the fixture)
from ckcluster import Cluster, node_statuses, probe, wait_for

SRC = os.path.abspath(os.environ.get("CK_SOURCE_DIR", "../.."))
TOKEN = "tls-test-token-0123456789"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    subprocess.run(["sh", os.path.join(SRC, "tests/tls/mkcerts.sh"), d], check=True)
    return d


@pytest.fixture
def tls_client(certs):
    """The harness's https:// requests trust the test CA and present the
    client certificate (the nodes require one)."""
    use_tls_client(os.path.join(certs, "ca.pem"), os.path.join(certs, "client.pem"),
                   os.path.join(certs, "client.key"))
    yield
    use_tls_client(None)


def tls_env(certs, cert="node", key=None):
    return {
        "TLS_CERT": cert if os.path.isabs(cert) else os.path.join(certs, cert + ".pem"),
        "TLS_KEY": key or os.path.join(certs, cert + ".key"),
        "TLS_CA": os.path.join(certs, "ca.pem"),
        "TLS_VERIFY_PEERS": "true",
        "CLUSTER_TOKEN": TOKEN,
    }


def peer_serial(certs, port, client="client"):
    """The serial of the certificate the TLS server on `port` presents, after
    a full handshake with a client certificate; None when it refuses."""
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    ctx.load_cert_chain(os.path.join(certs, client + ".pem"), os.path.join(certs, client + ".key"))
    try:
        with socket.create_connection((HOST, port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=HOST) as t:
                return t.getpeercert()["serialNumber"]
    except (OSError, ssl.SSLError):
        return None


def cert_serial(path):
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", path], check=True,
                         capture_output=True, text=True).stdout
    return out.strip().split("=", 1)[1]


def plain_refused(node):
    """Whether a plain HTTP request to the node's HTTPS port gets no HTTP
    answer (the server drops what is not a TLS handshake)."""
    with socket.create_connection((HOST, node.http_port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            return True
    return not data.startswith(b"HTTP/")


def test_tls_cluster_forms_refuses_outsiders_and_fails_over(ck, certs, tls_client):
    c = Cluster(ck, env=tls_env(certs))
    c.start(3)
    c.wait_converged(members=True)
    node_serial = cert_serial(os.path.join(certs, "node.pem"))
    for n in c.nodes:
        assert "over TLS" in n.log_text()
        # Both of the node's ports speak TLS with its certificate.
        assert peer_serial(certs, n.http_port) == node_serial
        assert peer_serial(certs, n.raft_port) == node_serial
    n1 = c.nodes[0]
    assert plain_refused(n1)
    # Mutual TLS: a client without a certificate gets no answer.
    anon = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection((HOST, n1.http_port), timeout=5) as s:
            with anon.wrap_socket(s, server_hostname=HOST) as t:
                t.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if not t.recv(4096):
                    raise OSError("closed")

    # A node whose certificate comes from another CA cannot join: the
    # cluster's TLS refuses its join call; it says why and stays outside.
    rogue = c.add(env=tls_env(certs, "rogue"), wait=False)
    rogue.check_exit = False
    wait_for(lambda: "TLS with %s failed" % n1.http_addr in rogue.log_text() and "unknown ca" in rogue.log_text(),
             what="the rogue node to log its refused join")
    assert rogue.node_id not in (node_statuses(n1) or {})
    rogue.stop()
    c.nodes.remove(rogue)
    # /metrics counts the refusal and shows when the certificate expires.
    text = n1.get("/metrics").text
    assert metric(text, "clusterkit_http_tls_failures_total") >= 1
    assert metric(text, "clusterkit_http_tls_handshakes_total") >= 1
    assert metric(text, "clusterkit_tls_certificate_expiry_timestamp_seconds") > 1.7e9

    # Failover over TLS: the survivors elect a new leader and agree.
    leader = c.leader()
    leader.kill9()
    leader.check_exit = False
    survivors = [n for n in c.nodes if n is not leader]
    new = c.leader(nodes=survivors)
    assert new is not leader
    wait_for(lambda: all((node_statuses(n) or {}).get(leader.node_id) == "down" for n in survivors),
             what="the killed leader marked down over TLS")


def test_ckctl_and_the_smart_client_over_tls(ck, certs, tls_client, tmp_path):
    """ckctl (TLS_CA, TLS_CERT, TLS_KEY as the nodes use) and
    clusterkit.client (https:// seeds and a client context) talk to a TLS
    cluster with mutual TLS; without the CA, ckctl fails and says TLS."""
    c = Cluster(ck, env=tls_env(certs))
    c.start(2)
    c.wait_converged(members=True)
    n1 = c.nodes[0]
    ckctl = os.path.join(BUILD_DIR, "ckctl")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TLS_") and k != "CK_ADDR"}
    tls = dict(base, TLS_CA=os.path.join(certs, "ca.pem"), TLS_CERT=os.path.join(certs, "client.pem"),
               TLS_KEY=os.path.join(certs, "client.key"))
    r = subprocess.run([ckctl, "--addr", n1.http_addr, "--json", "members"], env=tls, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(m["id"] for m in json.loads(r.stdout)["cluster"]["nodes"]) == sorted(n.node_id for n in c.nodes)
    r = subprocess.run([ckctl, "--addr", "https://" + n1.http_addr, "leader"], env=base, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "TLS" in r.stderr, (r.stdout, r.stderr)

    # The smart client in its own process (ckrun client_probe.lua): its first
    # table routes every key as the node does.
    env = dict(base, CK_ADDR="https://" + n1.http_addr, PROBE_KEYS="8",
               PROBE_TLS_CA=tls["TLS_CA"], PROBE_TLS_CERT=tls["TLS_CERT"], PROBE_TLS_KEY=tls["TLS_KEY"])
    probe_lua = os.path.join(SRC, "tests/cluster/client_probe.lua")
    with open(str(tmp_path / "probe.err"), "wb") as err:
        p = subprocess.Popen([CKRUN, probe_lua], env=env, stdout=subprocess.PIPE, stderr=err,
                             stdin=subprocess.DEVNULL)
        try:
            table = None
            for _ in range(100):  # bounded: the probe prints a few lines, then its first table
                line = p.stdout.readline()
                if not line:
                    break
                ev = json.loads(line)
                if ev.get("event") == "table":
                    table = ev
                    break
        finally:
            p.terminate()
            p.wait(timeout=30)
    assert table is not None, open(str(tmp_path / "probe.err")).read()
    for key, owners in table["routes"].items():
        j = probe(n1, "/partitions/key?key=" + key)
        assert owners == [j["primary"]] + j["replicas"]


def test_sighup_reloads_http_and_raft_certificates(ck, certs, tls_client, tmp_path):
    cert, key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(os.path.join(certs, "node.pem"), cert)
    shutil.copy(os.path.join(certs, "node.key"), key)
    c = Cluster(ck, env=tls_env(certs, cert, key))
    c.start(3)
    c.wait_converged(members=True)
    n1 = c.nodes[0]
    old, new = cert_serial(os.path.join(certs, "node.pem")), cert_serial(os.path.join(certs, "node2.pem"))
    assert peer_serial(certs, n1.http_port) == old

    # A broken file: the reload fails, says why, and the old one stays.
    with open(cert, "w") as f:
        f.write("not a certificate\n")
    os.kill(n1.pid, signal.SIGHUP)
    wait_for(lambda: "TLS reload failed" in n1.log_text(), what="the failed reload logged")
    assert peer_serial(certs, n1.http_port) == old
    assert n1.running()

    shutil.copy(os.path.join(certs, "node2.pem"), cert)
    shutil.copy(os.path.join(certs, "node2.key"), key)
    os.kill(n1.pid, signal.SIGHUP)
    wait_for(lambda: peer_serial(certs, n1.http_port) == new, what="HTTPS serving the reloaded certificate")
    assert peer_serial(certs, n1.raft_port) == new
    assert "TLS reloaded: certificate serial " + new in n1.log_text()

    # The cluster keeps working across the reload: a fourth node joins
    # through the reloaded node, and all four agree.
    c.add(join=n1)
    c.wait_converged(members=True)
    assert probe(n1, "/ready")


def test_expired_certificate_stops_ckrun_with_the_reason(ck, certs):
    c = Cluster(ck, env=tls_env(certs, "expired"))
    n = c.add(wait=False)
    n.check_exit = False
    code = n.wait_exit(30)
    assert code not in (None, 0)
    text = n.log_text()
    assert "TLS_CERT" in text and "expired" in text and "expired.pem" in text


def test_an_application_calls_its_members_over_tls(ck, certs, tls_client):
    """examples/kv on a mutual-TLS cluster: writes forwarded to the primary, replicated to the replicas and copied to a joining owner all go over HTTPS through ck:url and ck:request (they were plain http:// before, and every one failed)."""
    kv_app = os.path.join(SRC, "examples", "kv", "app.lua")
    env = dict(tls_env(certs), REPLICATION_FACTOR="2", PARTITION_COUNT="8", REBALANCE_DELAY="1")
    c = Cluster(ck, env=env, args=[kv_app])
    n1, n2 = c.start(2)
    c.wait_converged()
    keys = ["k%d" % i for i in range(16)]
    for i, k in enumerate(keys):  # On n1 whatever the owner: some are forwarded to n2.
        def put():
            r = n1.request("PUT", "/kv/" + k, body=b"v%d" % i)
            if r.status == 503:
                return False  # A partition still being copied.
            assert r.status == 200, (k, r.status, r.body)
            return True
        wait_for(put, what="the write of %s" % k)
    for i, k in enumerate(keys):
        r = n2.request("GET", "/kv/" + k)
        assert r.status == 200 and r.body == b"v%d" % i, (k, r.status, r.body)
    # A third owner joins and copies its partitions from the others over TLS.
    n3 = c.add(join=n1)
    c.wait_converged()

    def served_by_n3():
        for i, k in enumerate(keys):
            r = n3.request("GET", "/kv/" + k + "?stale=1")
            if r.status != 200:
                return False
            assert r.body == b"v%d" % i, (k, r.body)
        return True
    wait_for(served_by_n3, what="n3 to serve every key after its copies")
