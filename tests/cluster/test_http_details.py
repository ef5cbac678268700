"""HTTP details of the built-in API on real ckrun processes: HEAD on every GET
route, Allow on 405, ETag/304 on every state read (weak, list and * forms of
If-None-Match) and none on local reads, and NOT_LEADER redirects that keep
the request's path and query.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_http_details.py
"""

import http.client
import urllib.parse

from ckharness import ck  # noqa: F401  (the fixture)
from ckharness import HOST, HTTP_TIMEOUT, metric, parse_raw_response, raw_request
from ckcluster import Cluster, wait_for

# Reads whose body is a function of the replicated state: ETag = state index.
STATE_READS = ["/cluster", "/nodes", "/nodes?limit=1", "/partitions", "/partitions/stats",
               "/partitions/key?key=user:123"]
# Reads that depend on this node's own view (liveness, raft, counters, the
# placement policy): no state-index ETag.
LOCAL_READS = ["/health", "/ready", "/health/detailed", "/consensus/leader", "/consensus/stats",
               "/metrics", "/rebalance/plan"]


def raw(node, method, path, headers=()):
    """One request on its own connection (Connection: close), so that every
    byte the node sends for it is read: (status, headers, body)."""
    head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, node.http_addr)
    for name, value in headers:
        head += "%s: %s\r\n" % (name, value)
    return parse_raw_response(raw_request(node.http_port, (head + "\r\n").encode("latin-1")))


def state_index(node):
    return node.get_json("/consensus/stats")["state_index"]


def test_head_answers_like_get_without_a_body(ck):
    """HEAD on every GET route answers the GET's status, Content-Type, ETag and Content-Length, and sends no body."""
    n = ck.node("node-1")
    for path in STATE_READS + LOCAL_READS:
        def same_as_get():
            before = n.get(path)
            status, headers, body = raw(n, "HEAD", path)
            after = n.get(path)
            assert status == before.status, (path, status, before)
            assert body == b"", (path, body[:200])
            assert headers.get("content-type") == before.headers.get("Content-Type"), (path, headers)
            assert headers.get("etag") == before.headers.get("ETag"), (path, headers)
            assert int(headers["content-length"]) > 0, (path, headers)
            # The metrics count requests, so that body changes every time.
            if path == "/metrics" or before.body != after.body:
                return path == "/metrics"
            assert int(headers["content-length"]) == len(before.body), (path, headers, before)
            return True
        wait_for(same_as_get, what="a HEAD of %s between two equal GETs" % path)

    # On a kept-alive connection a HEAD answer is followed directly by the
    # next answer: a stray body would be read as the next status line.
    conn = http.client.HTTPConnection(HOST, n.http_port, timeout=HTTP_TIMEOUT)
    try:
        for method in ("HEAD", "HEAD", "GET", "HEAD"):
            conn.request(method, "/health")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (method, r.status)
            assert body == (b"" if method == "HEAD" else n.get("/health").body), (method, body)
    finally:
        conn.close()


def test_405_lists_the_allowed_methods(ck):
    """A 405 carries Allow with every method of the path, HEAD wherever GET is; HEAD is not served where there is no GET."""
    n = ck.node("node-1")
    for method, path, allow in [("POST", "/health", "GET, HEAD"), ("DELETE", "/cluster", "GET, HEAD"),
                                ("GET", "/sync", "POST"), ("HEAD", "/rebalance", "POST"),
                                ("PUT", "/rebalance/plan", "GET, HEAD")]:
        status, headers, body = raw(n, method, path)
        assert status == 405, (method, path, status, body)
        assert headers.get("allow") == allow, (method, path, headers)
        assert (body == b"") == (method == "HEAD"), (method, path, body)
    status, headers, _ = raw(n, "HEAD", "/nope")
    assert status == 404 and "allow" not in headers, headers


def test_etag_on_every_state_read(ck):
    """Every state read carries ETag = the state index and answers 304 to If-None-Match in its strong, weak, list, * and repeated forms; local reads carry no ETag and ignore If-None-Match."""
    n = ck.node("node-1")
    for path in STATE_READS:
        def check():
            index = state_index(n)
            etag = '"%d"' % index
            r = n.get(path)
            assert r.status == 200, (path, r)
            if state_index(n) != index:
                return False  # The state moved meanwhile: look again.
            assert r.headers.get("ETag") == etag, (path, r.headers)
            other = '"%d"' % (index + 1000)
            for inm in [etag, "W/" + etag, "%s, %s" % (other, etag), '%s,W/%s' % (other, etag), "*",
                        " ,%s, " % etag]:
                status, headers, body = raw(n, "GET", path, [("If-None-Match", inm)])
                assert status == 304, (path, inm, status, body[:200])
                assert headers.get("etag") == etag and body == b"", (path, inm, headers, body)
            # Repeated header lines make one list.
            status, headers, _ = raw(n, "GET", path, [("If-None-Match", other), ("If-None-Match", etag)])
            assert status == 304, (path, "two lines", status)
            status, headers, body = raw(n, "HEAD", path, [("If-None-Match", "W/" + etag)])
            assert status == 304 and body == b"", (path, "HEAD", status)
            # No match, or a malformed value: the full answer.
            for inm in [other, "%s, %s" % (other, '"x"'), "%s, 12" % etag, etag[1:], "w/" + etag]:
                status, headers, body = raw(n, "GET", path, [("If-None-Match", inm)])
                assert status == 200 and body == r.body, (path, inm, status, body[:200])
            return True
        wait_for(check, what="a steady state index around the checks of %s" % path)

    for path in LOCAL_READS:
        r = n.get(path)
        assert r.status == 200, (path, r)
        assert "ETag" not in r.headers, (path, r.headers)
        for inm in ["*", '"%d"' % state_index(n)]:
            status, _, body = raw(n, "GET", path, [("If-None-Match", inm)])
            assert status == 200 and body, (path, inm, status)


def test_not_leader_location_keeps_path_and_query(ck):
    """A follower's 307 NOT_LEADER points at the leader with the request's own path and query, so following it reaches the same endpoint."""
    c = Cluster(ck)
    c.start(2)
    c.wait_converged(members=True)
    lead = c.leader()
    follower = c.followers()[0]
    for path in ["/rebalance?reason=a%20test&x", "/rebalance/pause", "/rebalance/resume?", "/join"]:
        body = {"node": {"id": "probe", "ip": "127.0.0.1:1"}, "raft_addr": "127.0.0.1:2"} \
            if path == "/join" else None
        r = follower.post(path, body=body)
        assert r.status == 307, (path, r)
        assert r.json()["error"]["code"] == "NOT_LEADER", r
        want = "http://%s%s" % (lead.http_addr, path.rstrip("?"))
        assert r.headers.get("Location") == want, (path, r.headers)
        if path != "/join":
            # What curl -L does: the same method to the Location.
            again = lead.post(r.headers["Location"][len(lead.url):])
            assert again.status == 200, (path, again)


# ---------------------------------------------------------------------------
# The key-lookup fast path (runtime/ck_keyroute.h): C answers GET
# /partitions/key from the tails the Lua handler encoded for the current
# state; a conditional request always reaches the Lua handler.
# ---------------------------------------------------------------------------

CACHED_BODIES = ["/cluster", "/partitions", "/partitions/stats"]


def route_count(node, route):
    """clusterkit_http_requests_total{route=..., code="200"} on node (0 before the first)."""
    v = metric(node.get("/metrics").body.decode(), 'clusterkit_http_requests_total{route="%s",code="200"}' % route)
    return int(v or 0)


def test_cached_state_reads_answered_in_c_match_the_lua_handler(ck):
    """GET /cluster, /partitions and /partitions/stats answered in C carry the Lua handler's bytes, ETag and X-CK-Known-Leader; a blocking query and If-None-Match still reach Lua; the requests count in /metrics."""
    n = ck.node("node-1")
    for path in CACHED_BODIES:
        def check():
            index = state_index(n)
            before = route_count(n, path)
            first = raw(n, "GET", path)
            again = [raw(n, "GET", path) for _ in range(5)]
            lua = raw(n, "GET", path, [("If-None-Match", '"no-such-tag"')])
            if state_index(n) != index:
                return False
            for r in again:
                assert r[0] == lua[0] == first[0] == 200, (path, r[0], lua[0])
                assert r[2] == lua[2], (path, r[2][:200], lua[2][:200])
                for h in ("etag", "x-ck-known-leader", "content-type"):
                    assert r[1].get(h) == lua[1].get(h), (path, h, r[1], lua[1])
            assert route_count(n, path) - before == 7, (path, route_count(n, path), before)
            # A blocking query on the current index waits in Lua and times out
            # with the same body.
            blocked = raw(n, "GET", path + "?index=%d&wait=50ms" % index)
            if state_index(n) != index:
                return False
            assert blocked[0] == 200 and blocked[2] == lua[2], (path, blocked[0])
            return True
        wait_for(check, what="a steady state index around the checks of %s" % path)


def fast_path(node):
    """(answered, passed) of clusterkit_http_fast_path_total on node."""
    text = node.get("/metrics").body.decode()
    got = [metric(text, 'clusterkit_http_fast_path_total{result="%s"}' % r) for r in ("answered", "passed")]
    assert None not in got, got
    return int(got[0]), int(got[1])


def lookup_keys():
    """Keys that exercise the decoding and escaping rules: every byte below
    128 (controls, quotes, slash, backslash, DEL), '+' and an encoded '+',
    hash tags, UTF-8, invalid UTF-8, and the longest key allowed."""
    keys = ["k%sx" % chr(b) for b in range(128)]
    keys += ["a+b", "user:{42}:cart", "{}", "\u00e9t\u00e9", "\u20ac", "\U0001F600", "z" * 4096]
    return [(k, urllib.parse.quote(k, safe="")) for k in keys] + \
        [("plus", "a+b+c"), ("bad utf-8", "%ff%c3("), ("raw bytes", "%C3%A9%2B"), ("too long", "z" * 4097)]


def test_key_lookups_answered_in_c_match_the_lua_handler_byte_for_byte(ck):
    """A lookup answered in C has the status, ETag and body bytes of the Lua handler's answer (forced with a non-matching If-None-Match) for keys with every ASCII byte, UTF-8, hash tags and '+'; odd keys are left to Lua."""
    n = ck.node("node-1")
    keys = lookup_keys()

    def check():
        index = state_index(n)
        answered0, _ = fast_path(n)
        fast = 0
        for name, q in keys:
            path = "/partitions/key?key=" + q
            first = raw(n, "GET", path)          # Lua the first time per partition, C afterwards
            again = raw(n, "GET", path)
            lua = raw(n, "GET", path, [("If-None-Match", '"no-such-tag"')])
            assert first[0] == again[0] == lua[0], (name, first[0], again[0], lua[0])
            assert again[2] == lua[2] == first[2], (name, again[2][:200], lua[2][:200])
            assert again[1].get("etag") == lua[1].get("etag"), (name, again[1], lua[1])
            assert again[1].get("content-type") == lua[1].get("content-type"), (name, again[1])
            if again[0] == 200 and name not in ("bad utf-8",):
                fast += 1
        if state_index(n) != index:
            return False  # A commit reset the fast path meanwhile: look again.
        answered, _ = fast_path(n)
        # Every repeated lookup of a key C can answer was answered in C.
        assert answered - answered0 >= fast, (answered, answered0, fast)
        return True
    wait_for(check, what="a steady state index around the comparisons")
    status, _, body = raw(n, "GET", "/partitions/key?key=" + "z" * 4097)
    assert status == 400 and b"4096" in body, (status, body)


def test_key_lookups_in_c_follow_every_state_change(ck):
    """After joins change the owners, every lookup and /partitions (cached in C for the old table) answer the new table with the new ETag, as the Lua handler does."""
    c = Cluster(ck)
    first = c.start(1)[0]
    keys = ["user:%d" % i for i in range(300)]
    for k in keys:  # Fill the cache for every partition of the one-node table.
        first.get("/partitions/key?key=" + k)
        first.get("/partitions/key?key=" + k)
    for path in CACHED_BODIES:  # And the whole bodies.
        first.get(path)
        first.get(path)
    answered0, _ = fast_path(first)
    assert answered0 > 0, "the lookups were not answered in C"
    c.add(join=first)
    c.add(join=first)
    c.wait_converged(members=True)

    def check():
        r = first.get("/partitions")
        etag = r.headers.get("ETag")
        if etag != '"%d"' % state_index(first):
            # Not (yet) the current state. Nothing here may ask the Lua
            # handler before this holds: its answer refills C's cache, which
            # would hide a cache that a state change failed to reset.
            return False
        # What C serves is what Lua would answer now.
        status, headers, body = raw(first, "GET", "/partitions", [("If-None-Match", '"no-such-tag"')])
        if headers.get("etag") != etag:
            return False
        assert status == 200 and body == r.body, (r.body[:300], body[:300])
        owners = {p["id"]: [p["primary_node"]] + p["replica_nodes"] for p in r.json()["partitions"]}
        for k in keys:
            a = first.get("/partitions/key?key=" + k)
            if a.headers.get("ETag") != etag:
                return False  # The table moved: compare again.
            j = a.json()
            assert [j["primary"]] + j["replicas"] == owners[j["partition_id"]], (k, j, owners[j["partition_id"]])
            assert j["partition"]["epoch"] >= 1
        return len({o for row in owners.values() for o in row}) == 3
    wait_for(check, what="lookups that agree with /partitions over all three nodes")
    answered, _ = fast_path(first)
    assert answered > answered0, "no lookup was answered in C after the change"
