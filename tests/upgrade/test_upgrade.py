"""A rolling upgrade from the landed release v0.1.0 (commit c24f3d8, named
here because a clone may lack the tag) to this build, with real processes
on 127.0.0.1: three nodes start on the old build and are replaced one by one
by this build while lookups go on and a node of the new build joins; on
the way a new build leads an old member, and a graceful stop happens then. At every step every node must agree on the state
index, the table and the members' statuses; the new features (feature
level 2: the key-value store, the stopped status, builds in /nodes) must
switch on only once no old build is left, and a node of the old build may
not join after that.

Run: make test-upgrade (builds the old release into build/upgrade-<commit>
first and sets CK_OLD_CKRUN).
"""

import json
import os
import random
import sys
import threading
import urllib.parse

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cluster"))

from ckharness import CKRUN, ck  # noqa: E402,F401  (ck: the fixture)
from ckcluster import Cluster, node_statuses, partitions_of, probe, wait_for  # noqa: E402

OLD_COMMIT = "c24f3d8d0072dc2923333d9f6c41c11aca6cea9d"  # v0.1.0
OLD_CKRUN = os.environ.get("CK_OLD_CKRUN")

# Runs on both builds; the key-value route exists only where ck:kv_put does.
APP = r"""
local clusterkit = require "clusterkit"
local ck = clusterkit.new()
if ck.kv_put then
  ck:route("POST", "/test/kv/:key", function(req, res)
    local index, err = ck:kv_put(req.params.key, req:body() or "")
    if not index then return res:error(409, err.code, err.message) end
    return res:json({index = index})
  end)
end
assert(ck:start())
"""


def owners(p):
    return [p["primary_node"]] + list(p["replica_nodes"])


def snapshot_of(node):
    """What must be the same on every node: the state index, the statuses
    of the members and the table; or None when the node does not answer."""
    s = probe(node, "/consensus/stats")
    st = node_statuses(node)
    parts = partitions_of(node)
    if not s or st is None or not parts:
        return None
    again = probe(node, "/consensus/stats")
    if not again or again["state_index"] != s["state_index"]:
        return None  # It moved while it was read: read again.
    return (s["state_index"], tuple(sorted(st.items())), tuple((p["id"], tuple(owners(p))) for p in parts))


def wait_agreed(c, nodes, what):
    """Every node of `nodes` holds the same state index, statuses (all
    active) and table, and the table names only live members."""
    ids = {n.node_id for n in nodes}

    def check():
        seen = [snapshot_of(n) for n in nodes]
        if any(s is None for s in seen) or any(s != seen[0] for s in seen):
            return None
        _, statuses, table = seen[0]
        if set(dict(statuses)) != ids or any(v != "active" for _, v in statuses):
            return None
        if any(not set(o) <= ids or not o[0] for _, o in table):
            return None
        return seen[0]
    return wait_for(check, timeout=40, what="agreement %s" % what)


def feature_level(node):
    j = probe(node, "/cluster")
    return j and j["cluster"].get("feature_level")


def kv_put(node, key, value="v"):
    r = node.post("/test/kv/" + key, body=value)
    try:
        return r.status, r.json()
    except ValueError:
        return r.status, r.text


class Lookups(threading.Thread):
    """Key lookups on random running nodes until stopped: every answer must
    be 200 (or 503 while a node starts); a refused connection is a node
    being replaced."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes, self.stop_flag = nodes, threading.Event()
        self.ok, self.bad = 0, []

    def run(self):
        rng = random.Random(7)
        for i in range(200000):
            if self.stop_flag.is_set():
                return
            n = rng.choice(self.nodes)
            if not n.running():
                continue
            key = urllib.parse.quote("user:%d" % rng.randrange(10000))
            try:
                r = n.get("/partitions/key?key=" + key, timeout=2)
            except OSError:
                continue
            if r.status == 200:
                self.ok += 1
            elif r.status != 503:
                self.bad.append((n.name, r.status, r.text[:200]))
            self.stop_flag.wait(0.005)


def test_rolling_upgrade_from_v010(ck):
    """Three v0.1.0 nodes replaced one by one by this build with lookups and a join going on, a new leader over an old member on the way: every step agrees, feature level 2 comes only at the end, then an old build may not join."""
    if not OLD_CKRUN or not os.path.exists(OLD_CKRUN):
        pytest.fail("CK_OLD_CKRUN must name v0.1.0's ckrun (%s): run make test-upgrade" % OLD_COMMIT)
    app = os.path.join(str(ck.tmp_path), "app.lua")
    with open(app, "w") as f:
        f.write(APP)
    # The new build snapshots often, so that an old follower that was away
    # is sent a snapshot by a new leader (v0.1.0 ignores these variables).
    c = Cluster(ck, env={"PARTITION_COUNT": "32", "REPLICATION_FACTOR": "2", "SNAPSHOT_THRESHOLD": "32",
                         "SNAPSHOT_TRAILING": "8"}, args=[app])
    nodes = []
    for _ in range(3):
        n = c.add(start=False)
        n.ckrun = OLD_CKRUN
        n.start()
        nodes.append(n)
    wait_for(lambda: c.voter_ids(nodes) == {n.node_id for n in nodes}, timeout=20, what="three voters")
    wait_agreed(c, nodes, "on the old build")
    assert all(feature_level(n) is None for n in nodes)  # v0.1.0 has no feature levels

    n1, n2, n3 = nodes
    assert c.leader(nodes=nodes) is n1  # The bootstrapper leads first.

    def replace(n):
        n.stop()
        n.ckrun = CKRUN
        n.start()

    def still_level_1(members, step):
        # An old build is left: the new nodes stay at level 1, and what the
        # old one could not apply stays off.
        for m in members:
            if m.ckrun == CKRUN:
                assert feature_level(m) == 1, (step, m.name, probe(m, "/cluster"))
        st, body = kv_put(n2, "k-" + step)
        assert st == 409 and body["error"]["code"] == "NOT_READY", (step, st, body)
        assert "feature level" in body["error"]["message"]

    lookups = Lookups(nodes)
    lookups.start()
    try:
        # 1. A follower (the first voter after the leader in raft's
        # configuration), then a node of the new build joins.
        replace(n2)
        n4 = c.add(join=n2)
        members = nodes + [n4]
        lookups.nodes = members
        wait_agreed(c, members, "after replacing n2 and n4 joining")
        still_level_1(members, "n2")
        # 2. The old leader: v0.1.0 hands leadership to the first live voter
        # in the configuration, n2, so a new build leads an old member.
        replace(n1)
        wait_agreed(c, members, "after replacing n1")
        assert c.leader(nodes=members) is n2
        still_level_1(members, "n1")
        # 2b. The old n3 is away while the new leader commits past its
        # snapshot threshold: back (still old), it must install the new
        # leader's snapshot, which is written as v0.1.0 reads it.
        n3.stop()
        for i in range(40):
            for action in ("pause", "resume"):
                r = n2.post("/rebalance/" + action)
                assert r.status == 200, (i, action, r.status, r.text)
        wait_for(lambda: (probe(n2, "/consensus/stats") or {}).get("snapshot_index", 0) > 0, timeout=20,
                 what="the new leader to take a snapshot")
        assert (probe(n1, "/consensus/stats") or {}).get("snapshot_index", 0) > 0
        n3.start()
        wait_agreed(c, members, "after the old n3 came back")
        assert (probe(n3, "/consensus/stats") or {}).get("snapshot_index", 0) > 0, probe(n3, "/consensus/stats")
        # 3. Under the new leader, a graceful stop while the old n3 runs:
        # committed as v0.1.0 can apply it (down, not stopped), so n3's
        # state index and statuses stay those of the others.
        n4.stop()
        wait_for(lambda: (node_statuses(n2) or {}).get(n4.node_id) not in (None, "active"), timeout=20,
                 what="the leader to commit n4's stop")
        wait_for(lambda: len({snapshot_of(m) for m in (n1, n2, n3)}) == 1 and snapshot_of(n3) is not None,
                 timeout=20, what="n1, n2 and the old n3 to agree while n4 is stopped")
        assert (node_statuses(n3) or {}).get(n4.node_id) == "down", node_statuses(n3)
        n4.start()
        wait_agreed(c, members, "after n4's restart")
        still_level_1(members, "n4")
        # 4. The last old node.
        replace(n3)
        wait_for(lambda: all(feature_level(m) == 2 for m in members), timeout=20,
                 what="feature level 2 on every node")
        wait_agreed(c, members, "at feature level 2")
        assert "clusterkit_feature_level 2" in n3.get("/metrics").text
    finally:
        lookups.stop_flag.set()
        lookups.join(timeout=10)
    assert lookups.ok > 0 and not lookups.bad, (lookups.ok, lookups.bad[:5])

    # Level 2: the key-value store, builds in /nodes, graceful stops.
    st, body = kv_put(nodes[0], "after")
    assert st == 200, (st, body)

    def versions():
        j = probe(nodes[0], "/nodes")
        return j and all(x.get("version") for x in j["nodes"]) and j
    wait_for(versions, timeout=20, what="every node's version in /nodes")
    lead = c.leader(nodes=members)
    gone = next(m for m in members if m is not lead)
    gone.stop()
    wait_for(lambda: (node_statuses(lead) or {}).get(gone.node_id) == "stopped", timeout=20,
             what="a graceful stop committed as stopped")
    # A node of the old build cannot join any more: it is told why.
    r = lead.post("/join", body=json.dumps({"node": {"id": "old", "ip": "127.0.0.1:1"},
                                            "raft_addr": "127.0.0.1:2"}))
    assert r.status == 409 and r.json()["error"]["code"] == "FEATURE_LEVEL", r.text
    assert "feature level 1" in r.json()["error"]["message"]
