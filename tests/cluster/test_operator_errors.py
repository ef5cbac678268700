"""Loud operator errors (issue 12, item 5): a misconfigured node says what is
wrong, at the level an operator reads, instead of being admitted silently,
running a second cluster, waiting 30 s in silence or leaving a bootstrapped
data dir behind.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_operator_errors.py
"""

import http.server
import os
import re
import subprocess
import threading

import pytest

from ckharness import CKRUN, HOST, free_port, ck  # noqa: F401  (ck: the fixture)
from ckcluster import Cluster, node_statuses, wait_for

EXIT_TIMEOUT = 60.0   # bound for a node that is expected to give up and exit


def exits_nonzero(node, timeout=EXIT_TIMEOUT):
    """Waits (bounded) for node's process to exit; asserts a non-zero code."""
    code = node.wait_exit(timeout)
    assert code is not None, "%s still running after %ss\n%s" % (node.name, timeout, node.log_tail())
    assert code != 0, "%s exited 0\n%s" % (node.name, node.log_tail())
    return code


def members(node):
    return set(node_statuses(node) or {})


def join_body(node_id, config=None):
    """A /join body for a node that does not exist (nothing listens at its
    addresses): only what the leader decides before admitting matters."""
    b = {"node": {"id": node_id, "ip": "%s:%d" % (HOST, free_port())},
         "raft_addr": "%s:%d" % (HOST, free_port())}
    if config is not None:
        b["config"] = config
    return b


# ---------------------------------------------------------------------------
# 1. A joiner whose fixed settings differ from the cluster's
# ---------------------------------------------------------------------------

def test_joiner_with_other_partition_count_is_refused_and_one_with_defaults_joins(ck):
    """A joiner that sets PARTITION_COUNT=16 on a P=8 cluster exits non-zero
    with CONFIG_MISMATCH naming the setting and both values and is never a
    member; a joiner that leaves the settings at their defaults (so sends none,
    like an older version) and one that sets the cluster's own values join."""
    c = Cluster(ck, env={"PARTITION_COUNT": "8", "CLUSTER_NAME": "orders"})
    first = c.add()
    bad = c.add(start=False, env={"PARTITION_COUNT": "16"})
    bad.check_exit = False
    bad.start(wait=False)
    exits_nonzero(bad)
    log = bad.log_text()
    assert "CONFIG_MISMATCH" in log, bad.log_tail()
    assert "PARTITION_COUNT is 16 on the joining node but 8 in the cluster" in log, bad.log_tail()
    assert re.search(r"^ckrun: .*CONFIG_MISMATCH", log, re.M), bad.log_tail()
    assert bad.node_id not in members(first)

    plain = c.add(start=False)
    for k in ("PARTITION_COUNT", "CLUSTER_NAME"):
        plain.extra_env.pop(k, None)
    plain.start()
    same = c.add()  # PARTITION_COUNT=8, CLUSTER_NAME=orders: the cluster's own
    c.wait_converged(nodes=[first, plain, same], members=[first.node_id, plain.node_id, same.node_id])
    assert plain.get_json("/cluster")["cluster"]["config"]["partition_count"] == 8


@pytest.mark.parametrize("setting,value,option,cluster_value", [
    ("PARTITION_COUNT", 16, "partition_count", 8),
    ("REPLICATION_FACTOR", 2, "replication_factor", 3),
    ("CLUSTER_NAME", "billing", "cluster_name", "orders"),
    ("HASH_ALGORITHM", "md5", "hash_algorithm", "fnv1a64"),
])
def test_join_with_each_mismatching_setting_answers_409(ck, setting, value, option, cluster_value):
    """POST /join whose config differs in one fixed setting answers 409
    CONFIG_MISMATCH naming the setting and both values, and the node is not
    registered; a config that is not an object is a 400."""
    n = ck.node("node-1", env={"PARTITION_COUNT": "8", "CLUSTER_NAME": "orders"})
    r = n.post("/join", body=join_body("ghost", {option: value}))
    assert r.status == 409, r
    e = r.json()["error"]
    assert e["code"] == "CONFIG_MISMATCH", e
    assert (e["setting"], e["joining"], e["cluster"]) == (setting, value, cluster_value), e
    assert setting in e["message"] and str(value) in e["message"] and str(cluster_value) in e["message"], e
    assert "ghost" not in members(n)
    r = n.post("/join", body=dict(join_body("ghost"), config="big"))
    assert r.status == 400 and r.json()["error"]["code"] == "BAD_REQUEST", r
    assert "ghost" not in members(n)


# ---------------------------------------------------------------------------
# 2. A data dir of one cluster plus a JOIN_ADDR into another
# ---------------------------------------------------------------------------

def test_data_dir_of_another_cluster_with_join_addr_is_refused(ck):
    """A node whose data dir holds its own single-node cluster, restarted with
    a JOIN_ADDR into another cluster, exits non-zero with CLUSTER_MISMATCH
    saying to empty the data dir or drop JOIN_ADDR, and never answers as a
    node; a member of the JOIN_ADDR's cluster restarted with the same
    JOIN_ADDR comes back as before."""
    c = Cluster(ck)
    a = c.add()
    member = c.add()
    loner = ck.node("loner", env={"CK_LOG_LEVEL": "debug"})  # bootstraps its own cluster
    loner_id = loner.get_json("/cluster")["cluster"]["id"]
    assert loner_id != a.get_json("/cluster")["cluster"]["id"]
    loner.stop()

    loner.extra_env["JOIN_ADDR"] = a.http_addr
    loner.check_exit = False
    loner.start(wait=False)
    exits_nonzero(loner)
    log = loner.log_text()
    assert "CLUSTER_MISMATCH" in log and loner_id in log, loner.log_tail()
    assert "empty %s" % loner.data_dir in log and "drop JOIN_ADDR" in log, loner.log_tail()
    assert "loner" not in members(a)

    member.stop()
    member.start()  # its env still has JOIN_ADDR = a
    c.wait_converged(members=[a.node_id, member.node_id])


# ---------------------------------------------------------------------------
# 3. A JOIN_ADDR that cannot work says why, once per cause
# ---------------------------------------------------------------------------

class _Foreign(http.server.BaseHTTPRequestHandler):
    """Some other web service: 200 with HTML to everything."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>hello from another service</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def foreign_http():
    srv = http.server.ThreadingHTTPServer((HOST, 0), _Foreign)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield "%s:%d" % (HOST, srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


def warns(node, pattern):
    return [line for line in node.log_text().splitlines() if " WARN " in line and re.search(pattern, line)]


def retries(node, target):
    return len(re.findall(r"join via %s failed: .*; retrying" % re.escape(target), node.log_text()))


def joiner_warns_once(ck, name, join_addr, pattern, env=None):
    """Starts a joiner with join_addr and waits until it has retried a few
    times; asserts exactly one WARN line matching pattern."""
    e = {"JOIN_ADDR": join_addr}
    e.update(env or {})
    n = ck.node(name, env=e, start=False)
    if join_addr == "self":
        n.extra_env["JOIN_ADDR"] = n.http_addr
    n.check_exit = False
    n.start(wait=False)
    target = n.extra_env["JOIN_ADDR"]
    wait_for(lambda: retries(n, target) >= 3 or not n.running(), what="%s to retry its join" % name)
    found = warns(n, pattern)
    assert len(found) == 1, "expected one WARN matching %r, got %r\n%s" % (pattern, found, n.log_tail())
    return n


def test_join_addr_with_nothing_listening_warns_and_timeout_names_it(ck):
    """A JOIN_ADDR where nothing listens: one WARN saying connection refused,
    and start's TIMEOUT (then a non-zero exit) names that cause."""
    n = joiner_warns_once(ck, "j1", "%s:%d" % (HOST, free_port()), r"connection refused",
                          env={"START_TIMEOUT": "2"})
    exits_nonzero(n)
    assert re.search(r"TIMEOUT: not part of a ready cluster.*last join attempt: .*connection refused",
                     n.log_text()), n.log_tail()


def test_join_addr_pointing_at_the_node_itself_warns(ck):
    """JOIN_ADDR set to the node's own HTTP address: one WARN saying it is
    this node itself."""
    n = joiner_warns_once(ck, "j2", "self", r"is this node itself")
    n.stop()


def test_join_addr_of_another_service_warns_and_is_not_admitted(ck, foreign_http):
    """A JOIN_ADDR served by a non-clusterkit web server that answers 200 HTML:
    one WARN saying the answer is not clusterkit's, and the node does not take
    that 200 for an admission."""
    n = joiner_warns_once(ck, "j3", foreign_http, r"not clusterkit's")
    assert "admitted by" not in n.log_text(), n.log_tail()
    n.stop()


def test_join_addr_at_a_raft_port_warns(ck):
    """A JOIN_ADDR that is a member's raft port, not its HTTP port: one WARN
    saying no HTTP answer came."""
    member = ck.node("m1")
    n = joiner_warns_once(ck, "j4", member.raft_addr, r"no HTTP answer|not clusterkit's")
    n.stop()


# ---------------------------------------------------------------------------
# 4. RAFT_ADDR is checked before anything is written
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["no-such-host.invalid", "0.0.0.0", "[::]"])
def test_bad_raft_addr_fails_clearly_and_writes_nothing(ck, host):
    """RAFT_ADDR with an unresolvable host, 0.0.0.0 or :: fails the start
    with an error naming RAFT_ADDR, exits non-zero, and leaves no raft/ dir."""
    n = ck.node("r1", env={"RAFT_ADDR": "%s:%d" % (host, free_port())}, start=False)
    n.check_exit = False
    n.start(wait=False)
    exits_nonzero(n)
    assert re.search(r"^ckrun: .*RAFT_ADDR", n.log_text(), re.M), n.log_tail()
    assert not os.path.exists(os.path.join(n.data_dir, "raft")), os.listdir(n.data_dir)


def test_raft_port_in_use_fails_clearly_and_writes_nothing(ck):
    """A RAFT_ADDR whose port another process listens on fails the start
    naming the address, and bootstraps nothing: a retry at another port must
    not start from a first segment written with the taken address."""
    import socket
    holder = socket.socket()
    holder.bind((HOST, 0))
    holder.listen(1)
    try:
        addr = "%s:%d" % (HOST, holder.getsockname()[1])
        n = ck.node("r2", env={"RAFT_ADDR": addr}, start=False)
        n.check_exit = False
        n.start(wait=False)
        exits_nonzero(n)
        assert re.search(r"^ckrun: .*%s.*address already in use" % re.escape(addr), n.log_text(), re.M), \
            n.log_tail()
        raft_dir = os.path.join(n.data_dir, "raft")
        assert not os.path.exists(raft_dir) or not os.listdir(raft_dir), os.listdir(raft_dir)
    finally:
        holder.close()


# ---------------------------------------------------------------------------
# 5. Node ids are safe path components
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("node_id", ["../../escaped", "a/b", ".hidden", "..", "x" * 256, "tab\there"])
def test_unsafe_node_id_is_a_config_error(ck, tmp_path, node_id):
    """A NODE_ID that is not one safe path component is refused with a
    config error naming NODE_ID; the default data dir is never created."""
    work = tmp_path / "work"
    work.mkdir()
    http_port = free_port()
    env = {"NODE_ID": node_id, "HTTP_ADDR": "%s:%d" % (HOST, http_port),
           "RAFT_ADDR": "%s:%d" % (HOST, free_port(avoid=(http_port,))), "DATA_DIR": "", "JOIN_ADDR": "",
           "BOOTSTRAP": "true"}
    r = run_in(work, env)
    assert r.returncode != 0, r
    assert "NODE_ID" in r.stderr, r.stderr
    assert not os.path.exists(work / "data"), os.listdir(work)
    assert not os.path.exists(tmp_path / "escaped"), os.listdir(tmp_path)


def run_in(cwd, env, timeout=20):
    """Runs a plain `ckrun` node in cwd to completion (killed after timeout)."""
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([CKRUN], env=e, cwd=str(cwd), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_node_id_with_inner_dots_starts_and_a_dot_dot_one_does_not(ck, tmp_path):
    """Only a leading '.' is refused: node.1_a-b starts and is ready, ..x is
    refused naming NODE_ID."""
    n = ck.node("ok", env={"NODE_ID": "node.1_a-b"})
    assert n.get_json("/ready")["node_id"] == "node.1_a-b"
    r = run_in(tmp_path, {"NODE_ID": "..x", "HTTP_ADDR": "%s:%d" % (HOST, free_port()),
                          "RAFT_ADDR": "%s:%d" % (HOST, free_port()), "DATA_DIR": "", "JOIN_ADDR": ""})
    assert r.returncode != 0 and "NODE_ID" in r.stderr and "'.'" in r.stderr, r
