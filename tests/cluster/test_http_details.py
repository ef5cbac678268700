"""HTTP details of the built-in API on real ckrun processes: HEAD on every GET
route, Allow on 405, ETag/304 on every state read (weak, list and * forms of
If-None-Match) and none on local reads, and NOT_LEADER redirects that keep
the request's path and query.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_http_details.py
"""

import http.client

from ckharness import ck  # noqa: F401  (the fixture)
from ckharness import HOST, HTTP_TIMEOUT, parse_raw_response, raw_request
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
