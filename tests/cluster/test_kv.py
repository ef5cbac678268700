"""The distributed KV example (examples/kv/app.lua) on real ckrun processes:
routing, quorum replication, stale reads, deletes, failover after kill -9,
epoch fencing of replication, and partition copies to a node that joins.

Also the regressions of issue 9: a primary restarted (kill -9) before it is
marked down keeps every acknowledged write; a forwarded write or replication
past its deadline (or routed at an old epoch) is refused and never applied; a
replica that holds a newer stamp is not an ack.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_kv.py
"""

import os
import signal
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


def kv_cluster(ck, count, env=None, app=KV_APP):
    """A Cluster of `count` kv nodes (running `app`) whose tables are complete on every node."""
    c = Cluster(ck, env=dict(KV_ENV, **(env or {})), args=[str(app)])
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


def test_writes_forwarded_between_nodes_carry_the_cluster_token(ck):
    """With CLUSTER_TOKEN set, a write sent to a node that is not the key's primary is forwarded with the token and acknowledged."""
    c = kv_cluster(ck, 3, env={"CLUSTER_TOKEN": "s3cret-kv"})
    for i in range(12):
        key = "tok:%d" % i
        primary = where(c.nodes[0], key)["primary"]
        other = next(n for n in c.nodes if n.node_id != primary)
        r = put(other, key, b"v%d" % i)
        assert r.status == 200, (key, r)
        r = get(other, key)
        assert r.status == 200 and r.body == b"v%d" % i, (key, r)


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


# Failure detection so slow that a node restarted after kill -9 is never
# marked down: it comes back as the primary of the same partitions at the
# same epochs.
SLOW_DOWN_ENV = {"SUSPECT_AFTER": "120", "DOWN_AFTER": "240"}


def error_code(r):
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def served_by_itself(node, key):
    """node's own copy of key (a stale read it answers itself), or None."""
    r = get(node, key, stale=True)
    if r.status == 200 and r.headers["X-KV-Served-By"] == node.node_id:
        return r.body
    return None


def test_primary_restarted_before_it_is_marked_down_keeps_acknowledged_writes(ck):
    """kill -9 a key's primary and restart it at once (same data dir, not marked down): every acknowledged write
    stays readable, before and after the restart, and the last acknowledged value wins."""
    c = kv_cluster(ck, 3, env=SLOW_DOWN_ENV)
    key = "restart:{7}"
    loc = where(c.nodes[0], key)
    primary = c.by_id(loc["primary"])
    router = c.by_id(loc["replicas"][0])
    last = None
    for i in range(30):
        v = b"before the crash %d" % i
        r = put(router, key, v)
        assert r.status == 200, (i, r)
        last = v
    assert get(router, key).body == last

    primary.kill9()
    primary.start()
    # Still the primary, at the same epoch: nobody noticed the crash.
    again = where(router, key)
    assert again["primary"] == primary.node_id, again
    assert again["partition"]["epoch"] == loc["partition"]["epoch"], (loc, again)

    acked = 0
    for i in range(10):
        v = b"after the restart %d" % i
        r = put(router, key, v)
        if r.status == 200:
            last, acked = v, acked + 1
        for n in c.nodes:
            r = get(n, key)
            assert r.status == 200 and r.body == last, (i, n.name, r, last)
    assert acked > 0, "no write after the restart was acknowledged"


def test_forwarded_write_past_its_deadline_or_routed_at_an_old_epoch_is_refused(ck):
    """A forwarded write whose deadline passed answers 504 DEADLINE_EXCEEDED, one routed with an older epoch 409
    STALE_EPOCH, a replication past its deadline 504; none of them is applied anywhere."""
    c = kv_cluster(ck, 3)
    key = "deadline:{3}"
    assert put(c.nodes[0], key, b"current").status == 200
    loc = where(c.nodes[0], key)
    epoch = loc["partition"]["epoch"]
    primary = c.by_id(loc["primary"])
    owners = [primary] + [c.by_id(i) for i in loc["replicas"]]

    def forwarded(method, epoch, deadline_ms, body=None):
        hdrs = {"X-KV-Forwarded": "test", "X-KV-Epoch": str(epoch), "X-KV-Deadline": str(deadline_ms)}
        return primary.request(method, kv_path(key), body=body, headers=hdrs, timeout=TIMEOUT)

    r = forwarded("PUT", epoch, wall_ms() - 1, b"too late")
    assert r.status == 504 and error_code(r) == "DEADLINE_EXCEEDED", r
    r = forwarded("DELETE", epoch, wall_ms() - 1000)
    assert r.status == 504 and error_code(r) == "DEADLINE_EXCEEDED", r
    r = forwarded("PUT", epoch - 1, wall_ms() + 60000, b"routed at an old epoch")
    assert r.status == 409 and error_code(r) == "STALE_EPOCH", r
    r = primary.request("PUT", kv_path(key), body=b"no deadline", headers={"X-KV-Forwarded": "test"})
    assert r.status == 400, r

    # A replication past its deadline, with a stamp that would otherwise win.
    seq = version_of(get(primary, key))[1] + 1000
    for n in owners[1:]:
        r = n.request("PUT", "/internal/kv/" + urllib.parse.quote(key, safe=""), body=b"replicated too late",
                      headers=stamp_headers(epoch, seq, wall_ms() - 1))
        assert r.status == 504 and error_code(r) == "DEADLINE_EXCEEDED", (n.name, r)

    for n in owners:
        assert served_by_itself(n, key) == b"current", n.name
    assert get(c.nodes[0], key).body == b"current"

    # The same forwarded write within its deadline and epoch is applied.
    r = forwarded("PUT", epoch, wall_ms() + 60000, b"in time")
    assert r.status == 200, r
    assert get(c.nodes[0], key).body == b"in time"


def test_a_replica_holding_a_newer_stamp_is_not_an_ack(ck):
    """Replicas that hold a newer stamp for a key answer 409 STALE_STAMP with it; a write they refused is not
    acknowledged on their account: when the client gets 200, a quorum of the owners holds the value."""
    c = kv_cluster(ck, 3)
    key = "newer:{5}"
    assert put(c.nodes[0], key, b"v0").status == 200
    loc = where(c.nodes[0], key)
    epoch = loc["partition"]["epoch"]
    primary = c.by_id(loc["primary"])
    replicas = [c.by_id(i) for i in loc["replicas"]]
    path = "/internal/kv/" + urllib.parse.quote(key, safe="")
    # Far above the primary's next stamps (which follow the clock in ms).
    planted = version_of(get(primary, key))[1] + 10 ** 9
    for n in replicas:
        r = n.request("PUT", path, body=b"planted", headers=stamp_headers(epoch, planted))
        assert r.status == 200 and r.json()["applied"] is True, (n.name, r)
        r = n.request("PUT", path, body=b"older", headers=stamp_headers(epoch, planted - 1))
        assert r.status == 409 and error_code(r) == "STALE_STAMP", (n.name, r)
        assert (r.json()["error"]["epoch"], r.json()["error"]["seq"]) == (epoch, planted), r
        assert served_by_itself(n, key) == b"planted"

    r = put(replicas[0], key, b"acked")
    assert r.status == 200, r
    quorum = r.json()["quorum"]

    def holders():
        return sum(1 for n in [primary] + replicas if served_by_itself(n, key) == b"acked")
    wait_for(lambda: holders() >= quorum, what="%d owners holding the acknowledged value" % quorum)
    for n in c.nodes:
        r = get(n, key)
        assert r.status == 200 and r.body == b"acked", (n.name, r)
        assert version_of(r) > (epoch, planted), r


def test_a_write_answered_with_an_error_never_lands_afterwards(ck):
    """Both replicas of a key are stopped (SIGSTOP) during a write: the client gets an error, and when the replicas
    resume and handle the tries that queued up for them, they refuse them (past the deadline): the value never
    shows up anywhere."""
    c = kv_cluster(ck, 3, env=SLOW_DOWN_ENV)
    key = "late:{9}"
    first = put(c.nodes[0], key, b"v0")
    assert first.status == 200, first
    loc = where(c.nodes[0], key)
    primary = c.by_id(loc["primary"])
    replicas = [c.by_id(i) for i in loc["replicas"]]
    # The first write is answered once a quorum holds it; the last replica's copy
    # may still be on its way. Stopping that replica now would make its copy a late
    # try too (refused, so it would hold nothing): wait until every owner has it.
    wait_for(lambda: all(served_by_itself(n, key) == b"v0" for n in [primary] + replicas),
             what="every owner holding the first value")
    for n in replicas:
        os.kill(n.pid, signal.SIGSTOP)
    try:
        r = put(primary, key, b"answered with an error")
    finally:
        for n in replicas:
            os.kill(n.pid, signal.SIGCONT)
    assert r.status != 200, r

    owners = [primary] + replicas

    def settled():
        """Each owner's copy once the value that was answered with an error shows up somewhere, or once both
        replicas refused a late try; else None."""
        held = [served_by_itself(n, key) for n in owners]
        if b"answered with an error" in held:
            return held
        late = [probe(n, "/internal/kv-stats") or {} for n in replicas]
        return held if all(s.get("late_refused", 0) >= 1 for s in late) else None
    held = wait_for(settled, what="the replicas handling the tries that queued up")
    assert held == [b"v0"] * len(owners), held
    r = get(c.nodes[0], key)
    assert r.status == 200 and r.body == b"v0", r


# A kv node whose store starts copying only once the table already gives this
# node partitions: what happens to a node that joins (the leader places
# partitions on it before it has applied its first table, so it gets no
# `gain` event for them). Several such nodes joining at once may own a
# partition together, without any of its previous owners.
LATE_START_APP = r"""
package.path = %(examples)s .. "/?.lua;" .. %(examples)s .. "/?/init.lua;" .. package.path
local clusterkit = require "clusterkit"
local kv = require "kv"
local ck = clusterkit.new()
local store = kv.install(ck)
local start = ck.start
function ck.start(self)
  local ok, err = start(self)
  if not ok then return ok, err end
  local function owns_one()
    for _, p in ipairs(self:partitions() or {}) do
      if p.primary_node == self.id then return true end
      for _, r in ipairs(p.replica_nodes) do
        if r == self.id then return true end
      end
    end
    return false
  end
  for _ = 1, 600 do
    if owns_one() then break end
    self:wait_for_change(self:state_index(), 0.5)
  end
  return true
end
assert(store:start())
ck.log:info("kv: serving PUT/GET/DELETE http://%%s/kv/<key>", ck:me().http_addr)
"""


def kv_ready(node):
    j = probe(node, "/internal/kv-stats")
    return bool(j and j.get("ready"))


def test_nodes_that_join_copy_a_partition_none_of_its_owners_held(ck, tmp_path):
    """Nodes join while rebalancing is paused; when it resumes, partitions
    move onto them before their stores start copying, and (RF=1 here; in the
    fault suite's join-storm, RF=3 with every owner new) no owner in the table
    they start from held the partition. Their start copy must still find the
    previous owners: every acknowledged write reads back."""
    c = Cluster(ck, env=dict(KV_ENV, REPLICATION_FACTOR="1"), args=[KV_APP])
    c.start(3)
    old_ids = [n.node_id for n in c.nodes]
    c.wait_converged(members=True)
    for n in c.nodes:
        wait_for(lambda n=n: full_table(n, old_ids, rf=1), what="a full table on %s" % n.name)
    n1 = c.nodes[0]
    keys = {"key-%d" % i: ("value %d" % i).encode() for i in range(64)}
    for k, v in keys.items():
        r = put(n1, k, v)
        assert r.status == 200, (k, r)

    leader = c.leader()
    assert leader.post("/rebalance/pause").status == 200
    app = tmp_path / "late_start.lua"
    app.write_text(LATE_START_APP % {"examples": repr(os.path.join(SOURCE_DIR, "examples"))})
    new = [c.add(start=False, args=[str(app)]) for _ in range(3)]
    for n in new:
        n.spawn()
    for n in new:
        n.wait_ready()
    ids = [n.node_id for n in c.nodes]
    c.wait_converged(members=ids)
    assert leader.post("/rebalance/resume").status == 200

    new_ids = {n.node_id for n in new}

    def moved_table():
        t = full_table(n1, ids, rf=1)
        return t and [p["id"] for p in t if p["primary_node"] in new_ids]
    moved = wait_for(moved_table, what="partitions moved onto the new nodes")
    c.wait_converged(members=ids)
    for n in c.nodes:
        wait_for(lambda n=n: kv_ready(n), what="the store on %s ready" % n.name)

    lost = []
    for k, v in keys.items():
        r = get(n1, k)
        if not (r.status == 200 and r.body == v):
            lost.append((k, (where(n1, k) or {}).get("partition_id"), r.status))
    assert not lost, "acknowledged writes lost (partitions moved onto new nodes: %s): %s" % (moved, lost)


STORAGE_REGAIN_LUA = r"""
package.path = %(kv)s .. "/?.lua;" .. package.path
local storage = require "storage"
local json = require("clusterkit").json
local p = storage.new():part(2)
-- Held as an owner at epoch 26 (an acknowledged write), then lost and regained at 29.
assert(p:apply("key-2", "c3-424", 26, 1000))
assert(p:apply("key-9", "old", 20, 900))
p:drop_before(29)
assert(p:get("key-2") == nil and p.keys == 0, "not served after drop_before")
-- A fresh entry of the new epoch arrives while the copy is incomplete.
assert(p:apply("key-9", "new", 29, 1100))
local function values(copy)
  local out = {}
  for _, x in ipairs(copy.entries) do out[storage.unhex(x.k)] = x.v and storage.unhex(x.v) or false end
  return out
end
local plain, with = values(p:export()), values(p:export(true))
assert(plain["key-2"] == nil and plain["key-9"] == "new", json.encode(plain))
assert(with["key-2"] == "c3-424" and with["key-9"] == "new", json.encode(with))
-- The copy gives up: what was set aside is served again, newer stamps still win.
p:restore_dropped()
assert(p:get("key-2").value == "c3-424" and p:get("key-9").value == "new" and p.keys == 2)
assert(next(p.dropped) == nil)
-- A copy that completes forgets it; the linger sweep (clear) forgets it too.
p:drop_before(40); p:forget_dropped()
assert(next(p.dropped) == nil and p.keys == 0)
assert(p:apply("k", "v", 40, 2000)); p:drop_before(41); p:clear()
assert(next(p.dropped) == nil and next(p.entries) == nil)
print("ok")
"""


def test_a_regained_partition_keeps_what_drop_before_set_aside_until_a_copy_replaces_it(ck):
    """Regression (fault suite, leader-minority-split seed 775851): a split cut
    off two of a partition's three owners; the majority side moved it to
    nodes that could not complete a copy; after the heal the cut-off owners
    regained it and drop_before wiped their complete old copies, every owner
    waited for another (all SYNCING) and the copies gave up serving nothing:
    an acknowledged write read 404. drop_before now sets entries aside (not
    served, but handed out with ?partial=1&dropped=1 and restored when a copy
    gives up), and forgets them once a fresh copy completed or at the linger
    sweep."""
    out = ck.lua(STORAGE_REGAIN_LUA % {"kv": repr(os.path.join(SOURCE_DIR, "examples", "kv"))})
    assert "ok" in out


# A kv node whose routing node gives up on a write after 1 s (the default is
# 5 s), so that a replica stopped for a little longer misses a write without
# being marked down.
QUICK_ROUTE_APP = r"""
package.path = %(examples)s .. "/?.lua;" .. %(examples)s .. "/?/init.lua;" .. package.path
local clusterkit = require "clusterkit"
local kv = require "kv"
local ck = clusterkit.new()
local store = kv.install(ck, {route_timeout = 1, replication_timeout = 0.5})
assert(store:start())
"""


def part_stats(node, index):
    """node's /internal/kv-stats entry for partition `index`, or None."""
    j = probe(node, "/internal/kv-stats")
    for p in (j or {}).get("partitions", []):
        if p["index"] == index:
            return p
    return None


def test_a_copy_waits_for_owners_marked_down_that_hold_acknowledged_writes(ck, tmp_path):
    """Regression (fault suite, partition-plus-kill seed 16899: a read
    returned an older value than an acknowledged write). A restarted node's
    copy asked every member but those marked down; a split marks the nodes on
    its smaller side down while they are alive with their data, and they can
    be the only holders of an acknowledged write. Here: v2 is acknowledged by
    the primary A and replica B (replica C missed it); then B stops (marked
    down, alive) and A restarts with an empty memory. A must not complete its
    copy from C alone (v1) while B has not answered, and once B is back every
    node reads v2."""
    app = tmp_path / "quick_route.lua"
    app.write_text(QUICK_ROUTE_APP % {"examples": repr(os.path.join(SOURCE_DIR, "examples"))})
    # Every node a voter, so that stopping one and restarting another keeps
    # a raft majority (somebody must mark B down); detection slow enough
    # that C, stopped past a write's deadline, is not marked down.
    c = kv_cluster(ck, 5, env={"VOTERS": "5", "SUSPECT_AFTER": "2.5", "DOWN_AFTER": "4"}, app=app)
    key = "split:{3}"
    loc = where(c.nodes[0], key)
    index = int(loc["partition_id"].rsplit("-", 1)[1])
    a = c.by_id(loc["primary"])
    b, cc = [c.by_id(i) for i in loc["replicas"]]
    router = next(n for n in c.nodes if n not in (a, b, cc))

    assert put(router, key, b"v1").status == 200
    wait_for(lambda: all(served_by_itself(n, key) == b"v1" for n in (a, b, cc)), what="every owner holding v1")

    # C misses v2: stopped until the write's deadline has passed, then it
    # refuses the try that queued up for it.
    os.kill(cc.pid, signal.SIGSTOP)
    try:
        sent_ms = wall_ms()
        r = put(router, key, b"v2")
        assert r.status == 200 and r.json()["acks"] == 2, r
        wait_for(lambda: wall_ms() > sent_ms + 1500, what="the deadline of the write to pass")
    finally:
        os.kill(cc.pid, signal.SIGCONT)
    wait_for(lambda: (probe(cc, "/internal/kv-stats") or {}).get("late_refused", 0) >= 1,
             what="C refusing the late try")
    assert served_by_itself(cc, key) == b"v1"

    # B stops (alive, holding v2) and A restarts with an empty memory.
    os.kill(b.pid, signal.SIGSTOP)
    try:
        a.kill9()
        a.start()
        c.wait_status(a, b.node_id, "down")
        # With B marked down, the old code completed A's copy from C alone.
        stats = wait_for(lambda: (lambda p: p if p and (p["ready"] or b.node_id in p.get("waiting_for", [])) else None)(
            part_stats(a, index)), what="A's copy of the partition either done or waiting for B")
        assert not stats["ready"] and b.node_id in stats["waiting_for"], stats
        r = get(router, key)
        assert not (r.status == 200 and r.body == b"v1"), ("an acknowledged write was lost", r)
    finally:
        os.kill(b.pid, signal.SIGCONT)

    def everyone_reads_v2():
        for n in c.nodes:
            r = get(n, key)
            if r.status != 200 or r.body != b"v2":
                return None
        return True
    wait_for(everyone_reads_v2, what="every node reading v2 once B is back")
