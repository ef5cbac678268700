"""The distributed KV example (examples/kv/app.lua) on real ckrun processes:
routing, quorum replication, stale reads, deletes, failover after kill -9,
epoch fencing of replication, and partition copies to a node that joins.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_kv.py
"""

import os
import time
import urllib.parse

from ckharness import SOURCE_DIR, ck  # noqa: F401  (the fixture)
from ckcluster import Cluster, probe, wait_for

KV_APP = os.path.join(SOURCE_DIR, "examples", "kv", "app.lua")

# RF=3 with fast re-homing of a dead node's slots (FAST_ENV adds the rest).
KV_ENV = {"REPLICATION_FACTOR": "3", "PARTITION_COUNT": "16", "REBALANCE_DELAY": "1"}

# One client request; the routing node itself retries for up to 5 s.
TIMEOUT = 15


def kv_path(key, stale=False):
    return "/kv/" + urllib.parse.quote(key, safe="") + ("?stale=1" if stale else "")


def put(node, key, value):
    return node.request("PUT", kv_path(key), body=value, timeout=TIMEOUT)


def get(node, key, stale=False):
    return node.request("GET", kv_path(key, stale), timeout=TIMEOUT)


def delete(node, key):
    return node.request("DELETE", kv_path(key), timeout=TIMEOUT)


def wall_ms():
    return int(time.time() * 1000)


def stamp_headers(epoch, seq, deadline_ms=None):
    """Headers of a replication (/internal/kv/...) with stamp {epoch, seq}
    and a deadline (default: a minute from now)."""
    if deadline_ms is None:
        deadline_ms = wall_ms() + 60000
    return {"X-KV-Epoch": str(epoch), "X-KV-Seq": str(seq), "X-KV-Deadline": str(deadline_ms)}


def version_of(r):
    """(epoch, seq) from a GET answer's X-KV-Version."""
    epoch, seq = r.headers["X-KV-Version"].split(".")
    return int(epoch), int(seq)


def where(node, key):
    """node's /partitions/key answer for key, or None."""
    return probe(node, "/partitions/key?key=" + urllib.parse.quote(key, safe=""))


def full_table(node, members, rf=3):
    """node's /partitions when every partition has min(rf, #members) owners,
    all among members; else None."""
    j = probe(node, "/partitions")
    if not j:
        return None
    want = min(rf, len(members))
    for p in j["partitions"]:
        owners = [p["primary_node"]] + p["replica_nodes"]
        if len(owners) != want or not set(owners) <= set(members):
            return None
    return j["partitions"]


def kv_cluster(ck, count):
    """A Cluster of `count` kv nodes whose tables are complete on every node."""
    c = Cluster(ck, env=KV_ENV, args=[KV_APP])
    c.start(count)
    ids = [n.node_id for n in c.nodes]
    c.wait_converged(members=True)
    for n in c.nodes:
        wait_for(lambda n=n: full_table(n, ids), what="a full table on %s" % n.name)
    return c


def test_write_read_delete_and_failover(ck):
    """Writes and reads route through any node, survive the primary's kill -9, and accept new writes."""
    c = kv_cluster(ck, 3)
    n1, n2, n3 = c.nodes
    key, value = "user:{42}:profile", b"\x00binary \xff value\n"

    r = put(n1, key, value)
    assert r.status == 200, r
    assert r.json()["acks"] >= r.json()["quorum"] == 2

    r = get(n2, key)
    assert r.status == 200 and r.body == value, r

    # A stale read from a replica, answered by the replica itself (it may
    # get the write a moment after the quorum answered).
    loc = where(n1, key)
    replica = c.by_id(loc["replicas"][0])

    def stale_read():
        r = get(replica, key, stale=True)
        return r.status == 200 and r.headers["X-KV-Served-By"] == replica.node_id and r.body == value
    wait_for(stale_read, what="a stale read of %s from %s" % (key, replica.name))

    r = delete(n3, key)
    assert r.status == 200 and r.json()["deleted"] is True, r
    r = get(n1, key)
    assert r.status == 404 and r.json()["error"]["code"] == "NOT_FOUND", r

    # kill -9 the primary, wait for a new committed one, read through a survivor.
    assert put(n2, key, b"before the crash").status == 200
    primary = c.by_id(where(n1, key)["primary"])
    primary.kill9()
    survivors = [n for n in c.nodes if n is not primary]

    def new_primary():
        j = where(survivors[0], key)
        return j and j["primary"] not in ("", primary.node_id) and j["primary"]
    wait_for(new_primary, what="a new primary for %s" % key)

    for n in survivors:
        r = get(n, key)
        assert r.status == 200 and r.body == b"before the crash", (n.name, r)
    r = put(survivors[1], key, b"after the crash")
    assert r.status == 200, r
    for n in survivors:
        r = get(n, key)
        assert r.status == 200 and r.body == b"after the crash", (n.name, r)


def test_replication_with_an_old_epoch_is_refused(ck):
    """A replication stamped with an epoch older than the partition's answers 409 STALE_EPOCH and changes nothing."""
    c = kv_cluster(ck, 1)
    n1 = c.nodes[0]
    key = "fenced"
    assert put(n1, key, b"current").status == 200
    epoch = where(n1, key)["partition"]["epoch"]
    assert epoch >= 1

    path = "/internal/kv/" + key
    r = n1.request("PUT", path, body=b"from a deposed primary",
                   headers=stamp_headers(epoch - 1, 999))
    assert r.status == 409 and r.json()["error"]["code"] == "STALE_EPOCH", r
    r = n1.request("DELETE", path, headers=stamp_headers(0, 1))
    assert r.status == 409, r
    r = n1.request("PUT", path, body=b"x", headers={"X-KV-Epoch": "soon"})
    assert r.status == 400, r
    assert get(n1, key).body == b"current"

    # The current epoch with a higher sequence number is a valid replication.
    seq = version_of(get(n1, key))[1] + 1000
    r = n1.request("PUT", path, body=b"replicated", headers=stamp_headers(epoch, seq))
    assert r.status == 200 and r.json()["applied"] is True, r
    assert get(n1, key).body == b"replicated"


def test_joining_node_copies_the_partitions_it_gains(ck):
    """A fourth node that gains partitions copies their keys and serves them itself."""
    c = kv_cluster(ck, 3)
    n1 = c.nodes[0]
    keys = {"key-%d" % i: ("value %d" % i).encode() for i in range(48)}
    for k, v in keys.items():
        r = put(n1, k, v)
        assert r.status == 200, (k, r)

    n4 = c.add()
    ids = [n.node_id for n in c.nodes]
    c.wait_converged(members=True)
    wait_for(lambda: full_table(n4, ids), what="a table with %s" % n4.node_id)

    def owned_by_n4():
        mine = []
        for k in keys:
            j = where(n4, k)
            if not j:
                return None
            if n4.node_id in [j["primary"]] + j["replicas"]:
                mine.append(k)
        return mine
    mine = wait_for(owned_by_n4, what="keys owned by %s" % n4.node_id)
    assert mine

    def served_by_n4(k):
        r = get(n4, k, stale=True)
        return r.status == 200 and r.headers["X-KV-Served-By"] == n4.node_id and r.body == keys[k]
    for k in mine:
        wait_for(lambda k=k: served_by_n4(k), what="%s served by %s" % (k, n4.node_id))
    # Every key still reads back through the new node.
    for k, v in keys.items():
        r = get(n4, k)
        assert r.status == 200 and r.body == v, (k, r)
