"""clusterkit.client (issue 13, item 4) in its own process against real ckrun
nodes: it routes every key as the nodes do, learns each new table through
blocking queries (a join, a kill -9 of the very node it watches), and sends
examples/kv writes to the primary through a primary's death without losing
an acknowledged write.

The client runs tests/cluster/client_probe.lua under ckrun and prints JSON
lines; a reader thread collects them. Every wait is bounded; the probe is
stopped by its PID.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_client.py
"""

import json
import os
import signal
import subprocess
import threading
import urllib.parse

import pytest

from ckharness import CKRUN, SOURCE_DIR, ck  # noqa: F401  (ck: the fixture)
from ckcluster import Cluster, key_routes, probe, wait_for

PROBE = os.path.join(SOURCE_DIR, "tests", "cluster", "client_probe.lua")
KV_APP = os.path.join(SOURCE_DIR, "examples", "kv", "app.lua")
NKEYS = 32
KEYS = ["key-%d" % i for i in range(1, NKEYS + 1)]  # the probe routes the same keys
WAIT = 30.0  # bound for anything the test waits on


class Probe:
    """The client process and the JSON lines it printed so far."""

    def __init__(self, tmp_path, seeds, env=None):
        e = dict(os.environ)
        e.update({"CK_ADDR": ",".join(seeds), "PROBE_KEYS": str(NKEYS)})
        e.update(env or {})
        self.stderr = open(os.path.join(str(tmp_path), "probe.stderr"), "w+")
        self.out = open(os.path.join(str(tmp_path), "probe.out"), "w")  # for a failure's post-mortem
        self.proc = subprocess.Popen([CKRUN, PROBE], env=e, stdout=subprocess.PIPE, stderr=self.stderr,
                                     cwd=str(tmp_path), text=True)
        self.lines = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.out.write(line)
            self.out.flush()
            try:
                v = json.loads(line)
            except ValueError:
                v = {"event": "garbage", "line": line}
            with self.lock:
                self.lines.append(v)

    def events(self, kind):
        with self.lock:
            return [v for v in self.lines if v.get("event") == kind]

    def last_table(self):
        t = self.events("table")
        return t[-1] if t else None

    def stderr_text(self):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.reader.join(10)
        self.stderr.close()
        self.out.close()


@pytest.fixture
def probes(tmp_path):
    made = []

    def make(seeds, env=None):
        p = Probe(tmp_path, seeds, env)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def client_agrees_with(p, node):
    """True once the client's newest table is node's table, key by key."""
    assert p.proc.poll() is None, "the client exited:\n" + p.stderr_text()
    got = key_routes(node, KEYS)
    t = p.last_table()
    if got is None or t is None or t["index"] != got[0]:
        return False
    routes = got[1]
    return t["routes"] == routes


def test_client_routes_as_the_nodes_do_and_follows_a_join_and_the_loss_of_its_node(ck, probes):
    c = Cluster(ck, env={"PARTITION_COUNT": "16", "REPLICATION_FACTOR": "2", "REBALANCE_DELAY": "1"})
    n1, n2, n3 = c.start(3)
    c.wait_converged()
    # What the client reads to leave a node cut off from the majority.
    assert n1.get("/cluster").headers["X-CK-Known-Leader"] == "true"
    p = probes([n1.http_addr])  # one seed: it learns the others from the table
    wait_for(lambda: client_agrees_with(p, n1), WAIT, what="the client's first table to match n1's")

    # A join moves partitions: the new table reaches the client by push.
    before = p.last_table()["index"]
    n4 = c.add()
    c.wait_converged()
    wait_for(lambda: client_agrees_with(p, n2), WAIT, what="the client to follow the join")
    assert p.last_table()["index"] > before
    assert any("n4" in owners for owners in p.last_table()["routes"].values())

    # Kill -9 the node the client watches: it moves to a member it learned
    # from the table and sees n1 marked down and its partitions re-homed.
    n1.kill9()
    wait_for(lambda: (probe(n2, "/nodes") or {}).get("nodes") and
             {x["id"]: x["status"] for x in probe(n2, "/nodes")["nodes"]}.get("n1") == "down",
             WAIT, what="n1 marked down")
    wait_for(lambda: client_agrees_with(p, n2) and
             not any("n1" in o for o in p.last_table()["routes"].values()),
             WAIT, what="the client to learn n1's partitions moved")
    assert p.last_table()["watching"] != n1.http_addr
    assert p.proc.poll() is None, p.stderr_text()
    for n in (n2, n3, n4):
        assert n.running()


def test_client_writes_go_to_the_primary_and_survive_its_kill(ck, probes):
    c = Cluster(ck, env={"REPLICATION_FACTOR": "3", "PARTITION_COUNT": "16", "REBALANCE_DELAY": "1"},
                args=[KV_APP])
    n1, n2, n3 = c.start(3)
    c.wait_converged()
    total = 200
    p = probes([n1.http_addr, n2.http_addr], env={"PROBE_PUTS": str(total)})
    wait_for(lambda: len(p.events("put")) >= 40, WAIT, what="40 writes through the client")
    early = p.events("put")[:40]
    assert all(e["status"] == 200 for e in early), early

    victim = n1
    victim.kill9()
    wait_for(lambda: p.events("done"), 120, what="the client to finish its writes")
    puts = p.events("put")
    assert len(puts) == total
    acked = [e for e in puts if e["status"] == 200]
    after_kill = [e for e in puts[40:] if e["status"] == 200]
    assert after_kill, puts[40:]
    # Writes to the dead primary failed over without the caller's help: the
    # later ones were routed to the new primaries on the first try.
    assert puts[-1]["status"] == 200 and puts[-1]["node"] != "n1", puts[-1]
    # Every acknowledged write reads back from the survivors.
    for e in acked:
        r = n2.request("GET", "/kv/" + urllib.parse.quote(e["key"], safe=""), timeout=15)
        assert r.status == 200 and r.body.decode() == e["value"], (e, r.status, r.body)
