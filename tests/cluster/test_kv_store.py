"""The replicated key-value store over HTTP, on real ckrun processes: writes
through any node, consistent reads everywhere, one winner among concurrent
creates, watches and blocking reads that see a write made on another node,
no acknowledged write lost across a leader kill, the store kept across a
restart, and clear errors (401 without the token, 400, 404, 409, 413).

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_kv_store.py
"""

import base64
import json
import threading
import urllib.parse

from ckharness import ck, http_request  # noqa: F401  (the fixture)
from ckcluster import Cluster, wait_for

TOKEN = "kv-test-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


def cluster(ck, count=3, env=None):
    e = {"CLUSTER_TOKEN": TOKEN, "PARTITION_COUNT": "8", "KV_MAX_VALUE": "100"}
    e.update(env or {})
    c = Cluster(ck, env=e)
    c.start(count)
    c.wait_converged(members=True)
    return c


def kv_url(node, key, **query):
    q = ("?" + urllib.parse.urlencode(query)) if query else ""
    return node.url + "/v1/kv/" + urllib.parse.quote(key, safe="/") + q


def put(node, key, value, timeout=10, **query):
    body = value if isinstance(value, bytes) else value.encode()
    return http_request("PUT", kv_url(node, key, **query), body=body, headers=AUTH, timeout=timeout)


def get(node, key, **query):
    return http_request("GET", kv_url(node, key, **query), timeout=30)


def value_of(node, key, consistent=True):
    r = get(node, key, **({"consistent": "1"} if consistent else {}))
    return r.json().get("value") if r.status == 200 else None


def test_writes_through_any_node_are_read_everywhere(ck):
    c = cluster(ck)
    leader, (f1, f2) = c.leader(), c.followers()
    index_before = leader.get_json("/cluster")["state_index"]
    for i, n in enumerate((leader, f1, f2)):
        r = put(n, "cfg/%d" % i, "v%d" % i)
        assert r.status == 200, r
        # Read your write on the node that took it, without asking for it.
        assert value_of(n, "cfg/%d" % i, consistent=False) == "v%d" % i
    for n in c.nodes:
        for i in range(3):
            assert value_of(n, "cfg/%d" % i) == "v%d" % i, n.name
    listing = f2.get_json("/v1/kv?prefix=cfg/&consistent=1")
    assert [e["key"] for e in listing["entries"]] == ["cfg/0", "cfg/1", "cfg/2"]
    assert listing["more"] is False
    # KV writes leave the cluster's state (and its ETag) alone.
    assert leader.get_json("/cluster")["state_index"] == index_before


def test_concurrent_creates_have_one_winner(ck):
    c = cluster(ck)
    results = []

    def create(node, who):
        r = put(node, "lock/leader", who, cas=0)
        results.append((who, r.status))

    threads = [threading.Thread(target=create, args=(n, n.node_id)) for n in c.nodes for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 9, results
    winners = [who for who, status in results if status == 200]
    assert len(winners) == 1, results
    assert sorted(status for _, status in results) == [200] + [409] * 8, results
    for n in c.nodes:
        assert value_of(n, "lock/leader") == winners[0]


def test_a_watch_and_a_blocking_read_see_a_write_on_another_node(ck):
    c = cluster(ck)
    watcher, writer = c.followers()
    start = put(writer, "jobs/seed", "0").json()["index"]
    seen = {}

    def watch():
        seen["watch"] = http_request("GET", watcher.url + "/v1/watch?prefix=jobs/&index=%d&wait=20s" % start,
                                     timeout=30)

    def block():
        seen["get"] = http_request("GET", kv_url(watcher, "jobs/1", index=start, wait="20s"), timeout=30)

    threads = [threading.Thread(target=watch), threading.Thread(target=block)]
    for t in threads:
        t.start()
    # Both are waiting: nothing after `start` yet. Then write on the other node.
    put(writer, "other", "not under the prefix")
    idx = put(writer, "jobs/1", "run").json()["index"]
    for t in threads:
        t.join(30)
    w = seen["watch"].json()
    assert [(e["type"], e["key"], e["value"], e["index"]) for e in w["events"]] == [("put", "jobs/1", "run", idx)]
    assert w["index"] == idx
    g = seen["get"].json()
    assert (g["value"], g["mod_index"]) == ("run", idx)


def test_no_acknowledged_write_is_lost_when_the_leader_dies(ck):
    c = cluster(ck)
    leader = c.leader()
    acked = {}
    for i in range(20):
        r = put(c.followers()[i % 2], "acked/%02d" % i, "v%d" % i)
        assert r.status == 200, r
        acked["acked/%02d" % i] = "v%d" % i
    leader.kill9()
    survivors = [n for n in c.nodes if n is not leader]
    c.wait_converged(nodes=survivors, statuses=("active", "suspect", "down"))
    for i in range(20, 40):
        # Through the survivors; a write may meet the election and retry.
        key, value = "acked/%02d" % i, "v%d" % i

        def attempt():
            r = put(survivors[i % 2], key, value)
            return r.status == 200
        wait_for(attempt, what="a write after the failover")
        acked[key] = value
    for n in survivors:
        listing = n.get_json("/v1/kv?prefix=acked/&consistent=1")
        got = {e["key"]: e["value"] for e in listing["entries"]}
        assert got == acked, n.name
    # The killed node comes back with its data dir and catches up.
    leader.start()
    wait_for(lambda: value_of(leader, "acked/39", consistent=False) == "v39", what="the restarted node to catch up")
    listing = leader.get_json("/v1/kv?prefix=acked/")
    assert {e["key"]: e["value"] for e in listing["entries"]} == acked


def test_errors_and_binary_values(ck):
    c = cluster(ck, count=1)
    n = c.nodes[0]
    # Mutations need the cluster token; reads do not (no READ_TOKEN).
    r = http_request("PUT", kv_url(n, "k"), body=b"v", timeout=10)
    assert r.status == 401, r
    assert put(n, "k", "v").status == 200
    assert get(n, "k").status == 200
    assert get(n, "missing").status == 404
    assert get(n, "missing").json()["error"]["code"] == "NOT_FOUND"
    assert put(n, "big", "x" * 101).status == 413
    assert put(n, "big", "x" * 101).json()["error"]["code"] == "TOO_BIG"
    assert put(n, "k", "w", cas="abc").status == 400
    r = put(n, "k", "w", cas=1)
    assert r.status == 409 and r.json()["error"]["code"] == "CONFLICT", r
    assert http_request("GET", n.url + "/v1/kv/").status == 400
    assert http_request("GET", n.url + "/v1/watch?prefix=a").status == 400  # no index
    assert http_request("POST", n.url + "/v1/kv", body=b"{nope", headers=AUTH).status == 400
    r = http_request("POST", n.url + "/v1/kv", headers=AUTH, body=json.dumps(
        {"ops": [{"type": "upsert", "key": "k", "value": "v"}]}).encode())
    assert r.status == 400 and r.json()["error"]["code"] == "INVALID", r
    # The internal write path is token-protected too, and refuses garbage.
    assert http_request("POST", n.url + "/v1/internal/kv", body=b"\x01\x07").status == 401
    assert http_request("POST", n.url + "/v1/internal/kv", body=b"\x01\x07", headers=AUTH).status == 400
    # Binary: raw bytes in and out, value_base64 in JSON.
    blob = bytes(range(156, 256))  # not UTF-8
    assert put(n, "bin", blob).status == 200
    assert get(n, "bin", raw="1").body == blob
    assert base64.b64decode(get(n, "bin").json()["value_base64"]) == blob
    r = http_request("POST", n.url + "/v1/kv", headers=AUTH, body=json.dumps({
        "compares": [{"key": "bin", "target": "version", "op": "==", "value": 1}],
        "ops": [{"type": "put", "key": "bin2", "value_base64": base64.b64encode(b"\xff\x00").decode()}],
    }).encode())
    assert r.status == 200 and r.json()["succeeded"] is True, r
    assert get(n, "bin2", raw="1").body == b"\xff\x00"
    r = http_request("POST", n.url + "/v1/kv", headers=AUTH, body=json.dumps({
        "compares": [{"key": "bin", "target": "version", "op": "==", "value": 7}], "ops": []}).encode())
    assert r.status == 409 and r.json()["succeeded"] is False, r
    # Restarted, the node has its store (snapshot or log replay).
    n.restart()
    assert get(n, "bin", raw="1").body == blob


# ---------------------------------------------------------------------------
# Sessions, locks and elections
# ---------------------------------------------------------------------------

def post_json(node, path, body, timeout=30):
    return http_request("POST", node.url + path, body=json.dumps(body).encode(), headers=AUTH, timeout=timeout)


class KeepAlive(threading.Thread):
    """Keeps an HTTP session alive (PUT /v1/sessions/<id>) until stopped."""

    def __init__(self, node, sid, period):
        super().__init__(daemon=True)
        self.node, self.sid, self.period = node, sid, period
        self.stop = threading.Event()

    def run(self):
        for _ in range(10000):
            if self.stop.wait(self.period):
                return
            try:
                http_request("PUT", self.node.url + "/v1/sessions/%d" % self.sid, body=b"", headers=AUTH, timeout=5)
            except OSError:
                pass


def test_a_lock_passes_to_the_next_waiter_when_its_holders_keepalives_stop(ck):
    c = cluster(ck)
    a, b, observer = c.nodes
    s1 = post_json(a, "/v1/sessions", {"ttl": "2s"}).json()["id"]
    s2 = post_json(b, "/v1/sessions", {"ttl": "30s"}).json()["id"]
    ka = KeepAlive(a, s1, 0.4)
    ka.start()
    t1 = post_json(a, "/v1/locks/res", {"session": s1, "value": "a"}).json()["token"]
    got = {}

    def wait_lock():
        got["r"] = post_json(b, "/v1/locks/res", {"session": s2, "value": "b", "timeout": "60s"}, timeout=90)

    w = threading.Thread(target=wait_lock)
    w.start()
    def waiters():
        r = http_request("GET", observer.url + "/v1/locks/res")
        return r.status == 200 and r.json()["waiters"]
    wait_for(lambda: waiters() == 1, what="the waiter to queue")
    held = observer.get_json("/v1/locks/res")
    assert (held["value"], held["token"], held["session"]) == ("a", t1, s1)
    # Kept alive well past its TTL, the holder keeps the lock. (A fixed time
    # on purpose: what is tested is that nothing changes during it.)
    ka.stop.wait(3.0)
    assert "r" not in got and observer.get_json("/v1/locks/res")["session"] == s1
    # The holder's keep-alives stop (a paused or dead client): its session
    # expires, and the waiter gets the lock with a newer fencing token.
    ka.stop.set()
    w.join(60)
    r = got["r"]
    assert r.status == 200, r
    assert r.json()["token"] > t1
    # The observer's read is local: wait (bounded) until it has applied the grant.
    wait_for(lambda: http_request("GET", observer.url + "/v1/locks/res").json().get("session") == s2,
             what="the observer to show the new holder")
    gone = http_request("PUT", a.url + "/v1/sessions/%d" % s1, body=b"", headers=AUTH)
    assert gone.status == 404, gone
    # Release, then nobody holds it.
    assert http_request("DELETE", b.url + "/v1/locks/res?session=%d" % s2, headers=AUTH).status == 200
    assert http_request("GET", b.url + "/v1/locks/res").status == 404  # read your writes there
    wait_for(lambda: http_request("GET", observer.url + "/v1/locks/res").status == 404,
             what="the observer to apply the release")


APP = """
local clusterkit = require "clusterkit"
local ck = clusterkit.new()
assert(ck:start())
local state = {}
ck:route("GET", "/state", function(_, res) return res:json(state) end)
clusterkit.spawn(function()
  -- This node's own session: it ends when the cluster marks the node down.
  local l = assert(ck:lock("job"))
  state.token = l.token
  local lead = assert(ck:elect("scheduler"))
  state.leader_token = lead.token
end)
"""


def test_a_dead_nodes_lock_and_leadership_go_to_the_next_node(ck, tmp_path):
    app = tmp_path / "locker.lua"
    app.write_text(APP)
    c = Cluster(ck, env={"CLUSTER_TOKEN": TOKEN, "PARTITION_COUNT": "8"}, args=[str(app)])
    c.start(3)
    c.wait_converged(members=True)
    states = lambda: {n.node_id: n.get_json("/state") for n in c.live()}  # noqa: E731
    first = wait_for(lambda: [i for i, s in states().items() if "leader_token" in s], what="a holder")
    holder = c.by_id(first[0])
    token = holder.get_json("/state")["token"]
    leader_token = holder.get_json("/state")["leader_token"]
    assert c.nodes[0].get_json("/v1/elections/scheduler")["token"] == leader_token
    holder.kill9()
    # Marked down, its session ends: the next contender takes both.
    nxt = wait_for(lambda: [(i, s) for i, s in states().items() if "token" in s], what="the next holder")
    (nid, s), = nxt
    assert nid != holder.node_id
    assert s["token"] > token
    wait_for(lambda: "leader_token" in c.by_id(nid).get_json("/state"), what="the next leader")
    assert c.by_id(nid).get_json("/state")["leader_token"] > leader_token
    view = c.by_id(nid).get_json("/v1/elections/scheduler")
    assert view["token"] == c.by_id(nid).get_json("/state")["leader_token"]
