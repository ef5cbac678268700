"""A catalog of malformed and hostile requests against one real node.

Every case gets a 4xx/5xx JSON error {"error": {"code", "message"}} where an
answer is possible, and after every case the node still answers GET /health
with 200. Requests go over raw sockets (so that they can be as broken as we
like) or through urllib; every read is bounded in bytes and in time, and
nothing here asserts how long anything took.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q test_malformed.py
"""

import json
import select
import socket
import time

import pytest

from ckharness import ck  # noqa: F401  (the fixture)
from ckharness import HOST, HTTP_TIMEOUT

MAX_HEADER_SIZE = 16384
MAX_BODY_SIZE = 65536
MAX_CONNECTIONS = 16

# The limits every node here runs with. One-second header and body deadlines
# make a request that the server thinks is unfinished end in a 408 at once.
LIMITS = {
    "MAX_HEADER_SIZE": str(MAX_HEADER_SIZE),
    "MAX_BODY_SIZE": str(MAX_BODY_SIZE),
    "HEADER_TIMEOUT": "1",
    "BODY_TIMEOUT": "1",
}

MAX_REPLY = 1 << 20  # bytes read at most for one reply


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

class Reply:
    """One HTTP response read off a socket; interim holds any 1xx statuses."""

    def __init__(self, status, headers, body, interim):
        self.status = status
        self.headers = headers
        self.body = body
        self.interim = interim

    def __repr__(self):
        return "<Reply %d %r>" % (self.status, self.body[:200])


def read_reply(sock, timeout=HTTP_TIMEOUT):
    """Reads one response (skipping 1xx ones) from sock: a Reply, or None when
    the server closed the connection without sending a byte."""
    deadline = time.monotonic() + timeout
    buf = b""
    interim = []

    def fill():
        nonlocal buf
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > MAX_REPLY:
            raise AssertionError("no complete reply within bounds; got %r" % buf[:300])
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("no complete reply within %ss; got %r" % (timeout, buf[:300]))
        buf += chunk
        return chunk != b""

    for _ in range(64):  # at most this many 1xx responses before the real one
        while b"\r\n\r\n" not in buf:
            if not fill():
                if buf == b"" and not interim:
                    return None
                raise AssertionError("connection closed inside a reply: %r" % buf[:300])
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert len(parts) >= 2 and parts[0] in ("HTTP/1.1", "HTTP/1.0") and parts[1].isdigit(), lines[0]
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep, "header line without a colon: %r" % line
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            interim.append(status)
            continue
        length = int(headers.get("content-length", "0"))
        assert length <= MAX_REPLY, headers
        while len(buf) < length:
            if not fill():
                raise AssertionError("connection closed inside a body: %r" % buf[:300])
        return Reply(status, headers, buf[:length], interim)
    raise AssertionError("too many interim responses")


def exchange(port, pieces, half_close=False, timeout=HTTP_TIMEOUT):
    """Sends pieces (bytes, or a list of bytes sent one after another) on a
    new connection and reads one reply (see read_reply)."""
    if isinstance(pieces, bytes):
        pieces = [pieces]
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            for p in pieces:
                s.sendall(p)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        return read_reply(s, timeout)


def assert_json_error(r, status=None, code=None):
    """r (a Reply or a harness Response) is a 4xx/5xx answer whose body is
    JSON {"error": {"code": str, "message": str}}; returns the error object."""
    assert r is not None, "the server closed the connection without an answer"
    assert 400 <= r.status < 600, r
    if status is not None:
        assert r.status == status, r
    ctype = r.headers.get("content-type") or r.headers.get("Content-Type") or ""
    assert ctype.startswith("application/json"), (r, ctype)
    body = json.loads(r.body)  # bytes: must be UTF-8 JSON
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), body
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str), body
    if code is not None:
        assert err["code"] == code, body
    return err


def assert_serving(n):
    """The node still runs and answers GET /health with 200."""
    assert n.running(), n.log_tail()
    r = n.get("/health")
    assert r.status == 200, r
    assert r.json()["status"] == "healthy", r


def request(line, *headers, body=b""):
    """Raw request bytes: a request line, header lines, a blank line, a body."""
    head = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    return head + body


def node(ck, **env):
    """A started node with the catalog's limits (env overrides them)."""
    e = dict(LIMITS)
    e.update({k: str(v) for k, v in env.items()})
    return ck.node("node-1", env=e)


# ---------------------------------------------------------------------------
# Request line: methods, targets, versions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    request(b"GET / HTTP/9.9"),
    request(b"GET / HTTP/1.2x"),
    request(b"FOO / HTTP/1.1"),
    request(b"get /health HTTP/1.1"),
    request(b"GET  HTTP/1.1"),
    request(b"GET /health HTTP/1.1 extra"),
    request(b"GET /health FTP/1.1"),
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32,
    request(b"GET /hea\x00lth HTTP/1.1"),
    request(b"GET /\x01 HTTP/1.1"),
    request(b"GET /health\x7f HTTP/1.1"),
], ids=["version-9.9", "version-garbage", "unknown-method", "lowercase-method", "no-target",
        "junk-after-version", "not-http", "http2-preface", "tls-hello", "nul-in-path",
        "control-char-in-path", "del-in-path"])
def test_bad_request_line_is_400(ck, payload):
    """A request line llhttp refuses (bad method, version, target bytes) gets a 400 JSON error."""
    n = node(ck)
    assert_json_error(exchange(n.http_port, payload), 400, "BAD_REQUEST")
    assert_serving(n)


@pytest.mark.parametrize("payload", [
    request(b"TRACE / HTTP/1.1", b"Host: x"),
    request(b"CONNECT 127.0.0.1:1 HTTP/1.1", b"Host: 127.0.0.1:1"),
    request(b"OPTIONS * HTTP/1.1", b"Host: x"),
    request(b"GET http://x/health HTTP/1.1", b"Host: x"),
    request(b"PATCH /cluster HTTP/1.1", b"Host: x", b"Content-Length: 2", body=b"{}"),
    request(b"GET /health%00 HTTP/1.1", b"Host: x"),
    request(b"GET /../../etc/passwd HTTP/1.1", b"Host: x"),
    request(b"GET /\xff\xfe HTTP/1.1", b"Host: x"),
], ids=["trace", "connect", "options-asterisk", "absolute-form", "patch", "encoded-nul",
        "dot-dot", "non-utf8-path"])
def test_request_nobody_routes_is_4xx_json(ck, payload):
    """A well-formed request for a method or target no route serves gets a 4xx JSON error."""
    n = node(ck)
    r = exchange(n.http_port, payload)
    assert_json_error(r)
    assert r.status < 500, r
    assert_serving(n)


# ---------------------------------------------------------------------------
# Header section
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("headers,status", [
    ((b"Host: x", b"No colon here"), 400),
    ((b"Host : x",), 400),
    ((b"Bad Name: x",), 400),
    ((b": empty name",), 400),
    ((b"X-A: b\x00c",), 400),
    ((b"X-A: b\rc",), 400),
    ((b"Content-Length: abc",), 400),
    ((b"Content-Length: -1",), 400),
    ((b"Content-Length: 1", b"Content-Length: 2"), 400),
    ((b"Content-Length: 99999999999999999999",), 400),
    ((b"Content-Length: 3", b"Transfer-Encoding: chunked"), 400),
    ((b"Transfer-Encoding: gzip",), 400),
    (tuple(b"X-H%d: v" % i for i in range(70)), 431),
], ids=["no-colon", "space-before-colon", "space-in-name", "empty-name", "nul-in-value",
        "cr-in-value", "content-length-letters", "content-length-negative",
        "content-length-twice", "content-length-overflow", "length-and-chunked",
        "transfer-encoding-not-chunked", "too-many-headers"])
def test_bad_header_is_rejected(ck, headers, status):
    """A malformed header, conflicting framing or more than 64 headers gets a 400/431 JSON error."""
    n = node(ck)
    r = exchange(n.http_port, request(b"POST /sync HTTP/1.1", *headers, body=b"abc"))
    assert_json_error(r, status)
    assert_serving(n)


def _slow_pieces(data, size=1024):
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("pieces", [
    [request(b"GET /health HTTP/1.1", b"X-Big: " + b"a" * (MAX_HEADER_SIZE + 100))],
    [request(b"GET /health HTTP/1.1", *(b"X-%d: %s" % (i, b"v" * 300) for i in range(60)))],
    [request(b"GET /partitions/key?key=" + b"k" * (MAX_HEADER_SIZE + 100) + b" HTTP/1.1")],
    [b"GET /health " + b" " * (MAX_HEADER_SIZE + 100) + b"HTTP/1.1\r\n\r\n"],
    [b"\r\n" * (MAX_HEADER_SIZE // 2 + 100) + request(b"GET /health HTTP/1.1")],
    _slow_pieces(request(b"GET /health HTTP/1.1", b"X-Big: " + b"a" * (MAX_HEADER_SIZE + 100))),
], ids=["one-big-header", "many-headers", "long-url", "spaces-before-version",
        "blank-lines-first", "in-pieces"])
def test_oversized_header_is_431(ck, pieces):
    """A header section over MAX_HEADER_SIZE, in one read or many, gets a 431 JSON error."""
    n = node(ck)
    assert_json_error(exchange(n.http_port, pieces), 431, "HEADER_TOO_LARGE")
    assert_serving(n)


def test_header_just_under_the_limit_is_served(ck):
    """A header section just under MAX_HEADER_SIZE still reaches the handler."""
    n = node(ck)
    base = request(b"GET /health HTTP/1.1", b"X-Pad: ")
    pad = b"p" * (MAX_HEADER_SIZE - len(base) - 8)
    r = exchange(n.http_port, request(b"GET /health HTTP/1.1", b"X-Pad: " + pad))
    assert r is not None and r.status == 200, r
    assert_serving(n)


# ---------------------------------------------------------------------------
# Body
# ---------------------------------------------------------------------------

def _chunked(*chunks, last=b"0\r\n\r\n"):
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + last


TOO_BIG = MAX_BODY_SIZE + 1


@pytest.mark.parametrize("pieces", [
    [request(b"POST /join HTTP/1.1", b"Content-Length: %d" % TOO_BIG)],
    [request(b"POST /join HTTP/1.1", b"Content-Length: %d" % TOO_BIG, body=b"x" * TOO_BIG)],
    [request(b"POST /join HTTP/1.1", b"Content-Length: 1073741824")],
    [request(b"POST /join HTTP/1.1", b"Transfer-Encoding: chunked"),
     _chunked(*[b"c" * 16384] * 5)],
    [request(b"POST /join HTTP/1.1", b"Transfer-Encoding: chunked"), b"100000\r\n"],
    [request(b"POST /join HTTP/1.1", b"Transfer-Encoding: chunked"), b"ffffffffffffffff\r\n"],
], ids=["declared-no-body-sent", "declared-and-sent", "declared-1gib", "chunked-grows",
        "chunked-one-big-chunk", "chunked-max-size"])
def test_oversized_body_is_413(ck, pieces):
    """A body over MAX_BODY_SIZE, declared or chunked, gets a 413 JSON error (a declared one before it is sent)."""
    n = node(ck)
    assert_json_error(exchange(n.http_port, pieces), 413, "BODY_TOO_LARGE")
    assert_serving(n)


def test_oversized_body_with_expect_gets_413_without_continue(ck):
    """A client that sends Expect: 100-continue with a too-large Content-Length gets 413 and no 100 Continue."""
    n = node(ck)
    r = exchange(n.http_port, request(b"POST /join HTTP/1.1", b"Expect: 100-continue",
                                      b"Content-Length: %d" % TOO_BIG))
    assert_json_error(r, 413, "BODY_TOO_LARGE")
    assert r.interim == [], r.interim
    assert_serving(n)


def test_oversized_body_through_urllib_is_413(ck):
    """An ordinary HTTP client that posts a body over MAX_BODY_SIZE reads a 413 JSON error, not a reset."""
    n = node(ck)
    assert_json_error(n.post("/join", b"{" + b" " * MAX_BODY_SIZE + b"}"), 413, "BODY_TOO_LARGE")
    assert_serving(n)


def test_body_at_the_limit_reaches_the_handler(ck):
    """A body of exactly MAX_BODY_SIZE is read and judged by the handler (here: not JSON, 400)."""
    n = node(ck)
    assert_json_error(n.post("/join", b"x" * MAX_BODY_SIZE), 400, "BAD_REQUEST")
    assert_serving(n)


CHUNKED = request(b"POST /sync HTTP/1.1", b"Transfer-Encoding: chunked")


@pytest.mark.parametrize("tail", [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"-1\r\nx\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5;\x00\r\nhello\r\n0\r\n\r\n",
    b"\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
], ids=["size-not-hex", "size-negative", "space-after-size", "nul-in-extension",
        "empty-size-line", "no-crlf-after-data"])
def test_broken_chunked_is_400(ck, tail):
    """A chunked body with a broken size line or framing gets a 400 JSON error."""
    n = node(ck)
    assert_json_error(exchange(n.http_port, CHUNKED + tail), 400, "BAD_REQUEST")
    assert_serving(n)


def test_chunked_body_cut_short_times_out_with_408(ck):
    """A chunked body that stops before its last chunk gets a 408 JSON error after BODY_TIMEOUT."""
    n = node(ck)
    assert_json_error(exchange(n.http_port, CHUNKED + b"5\r\nhello\r\n"), 408, "TIMEOUT")
    assert_serving(n)


def test_client_that_hangs_up_mid_body_is_dropped(ck):
    """A client that half-closes in the middle of a body gets no answer and the node carries on."""
    n = node(ck)
    r = exchange(n.http_port, [CHUNKED + b"5\r\nhel"], half_close=True)
    assert r is None or 400 <= r.status < 600, r
    assert_serving(n)


# ---------------------------------------------------------------------------
# POST /join: invalid JSON, wrong types, unknown fields, odd numbers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"{", b"not json", b"", b"[]", b"null", b'"node"', b"1", b'{"node": ', b"[" * 5000,
    b'{"node": {}} trailing', b"\xff\xfe{}", b'{"node": {"id": "a\\ud800"}}',
], ids=["open-brace", "text", "empty", "array", "null", "string", "number", "truncated",
        "nested-5000", "trailing-garbage", "bad-utf8", "lone-surrogate"])
def test_join_invalid_json_is_400(ck, body):
    """A /join body that is not JSON, or not a JSON object, gets a 400 JSON error."""
    n = node(ck)
    assert_json_error(n.post("/join", body, headers={"Content-Type": "application/json"}),
                      400, "BAD_REQUEST")
    assert_serving(n)


def _join(node=None, **top):
    body = {"node": {"id": "n9", "ip": "127.0.0.1:1"}, "raft_addr": "127.0.0.1:2"}
    if node is not None:
        body["node"] = node
    body.update(top)
    return body


@pytest.mark.parametrize("body", [
    _join({"id": 5, "ip": "127.0.0.1:1"}),
    _join({"id": 1e300, "ip": "127.0.0.1:1"}),
    _join({"id": "", "ip": "127.0.0.1:1"}),
    _join({"id": "a b", "ip": "127.0.0.1:1"}),
    _join({"id": "x" * 300, "ip": "127.0.0.1:1"}),
    _join({"id": ["n9"], "ip": "127.0.0.1:1"}),
    _join("n9"),
    _join([]),
    _join(raft_addr={}),
    _join(raft_addr=5),
    _join(raft_addr="nowhere"),
    _join(raft_addr="127.0.0.1:99999"),
    _join({"id": "n9", "ip": []}),
    _join({"id": "n9", "ip": 8080}),
    _join({"id": "n9", "ip": "no port"}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "weight": -1}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "weight": 1e300}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "weight": 1.5}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "weight": "1"}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "services": {"a": 1}}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "services": ["x"]}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "name": 5}),
    _join({"id": "n9", "ip": "127.0.0.1:1", "zone": {}}),
], ids=["id-number", "id-huge", "id-empty", "id-space", "id-300-chars", "id-list",
        "node-string", "node-list", "raft-addr-object", "raft-addr-number", "raft-addr-no-port",
        "raft-addr-port-99999", "ip-list", "ip-number", "ip-no-port", "weight-negative",
        "weight-huge", "weight-fraction", "weight-string", "services-number", "services-list",
        "name-number", "zone-object"])
def test_join_wrong_types_are_400(ck, body):
    """A /join whose fields have the wrong type or an impossible value gets a 400 JSON error and admits nobody."""
    n = node(ck)
    assert_json_error(n.post("/join", body), 400, "BAD_REQUEST")
    assert n.get_json("/nodes")["total"] == 1
    assert_serving(n)


@pytest.mark.parametrize("raw", [
    b'{"node": {"id": "n9", "ip": "127.0.0.1:1", "weight": 1e309}, "raft_addr": "127.0.0.1:2"}',
    b'{"node": {"id": "n9", "ip": "127.0.0.1:1", "weight": -1e309}, "raft_addr": "127.0.0.1:2"}',
    b'{"node": {"id": "n9", "ip": "127.0.0.1:1", "weight": NaN}, "raft_addr": "127.0.0.1:2"}',
    b'{"node": {"id": "n9", "ip": "127.0.0.1:1", "weight": 1e999999999}, "raft_addr": "127.0.0.1:2"}',
    b'{"node": {"id": "n9", "ip": "127.0.0.1:1", "weight": -0.5}, "raft_addr": "127.0.0.1:2"}',
], ids=["weight-1e309", "weight-minus-1e309", "weight-nan", "exponent-overflow", "weight-minus-half"])
def test_join_odd_numbers_are_400(ck, raw):
    """Numbers JSON cannot hold (1e309, NaN) in /join get a 400 JSON error and admit nobody."""
    n = node(ck)
    assert_json_error(n.post("/join", raw, headers={"Content-Type": "application/json"}),
                      400, "BAD_REQUEST")
    assert n.get_json("/nodes")["total"] == 1
    assert_serving(n)


def test_join_unknown_fields_are_ignored_or_refused(ck):
    """A node's own re-join padded with unknown fields is accepted as if they were absent, or refused with a JSON error."""
    n = node(ck)
    body = {
        "node": {"id": n.node_id, "name": n.node_id, "ip": n.http_addr, "port": n.http_port,
                 "status": "active", "zone": "", "weight": 1,
                 "unknown": [1, {"x": None}], "id2": "other"},
        "raft_addr": n.raft_addr,
        "extra": {"deep": [1, 2, 3]}, "cluster": "whatever", "node_id": 42,
    }
    r = n.post("/join", body)
    if r.status != 200:
        assert_json_error(r)
    nodes = n.get_json("/nodes")
    assert nodes["total"] == 1, nodes
    me = nodes["nodes"][0]
    assert me["id"] == n.node_id and me["status"] == "active", me
    assert "unknown" not in me and "extra" not in me, me
    assert_serving(n)


# ---------------------------------------------------------------------------
# Query numbers and keys
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "limit=-1", "offset=-1", "limit=0", "limit=1e309", "offset=1e309", "limit=-1e309",
    "limit=nan", "offset=inf", "limit=1.5", "limit=%2D1", "limit=1&limit=-1",
    "limit=99999999999999999999", "offset=99999999999999999999", "limit=ten", "offset=",
])
def test_nodes_bad_numbers_are_400(ck, query):
    """/nodes rejects negative, huge, infinite, NaN and non-integer paging values with a 400 JSON error."""
    n = node(ck)
    assert_json_error(n.get("/nodes?" + query), 400, "BAD_REQUEST")
    assert_serving(n)


@pytest.mark.parametrize("query", [
    "", "key", "key=", "key=a&key=", "key=" + "k" * 10240, "key=" + "k" * 4097,
], ids=["no-key", "key-without-value", "empty", "last-repeat-empty", "10kb", "4097-bytes"])
def test_bad_key_is_400(ck, query):
    """/partitions/key without a key, with an empty one or one over 4096 bytes gets a 400 JSON error."""
    n = node(ck)
    assert_json_error(n.get("/partitions/key?" + query), 400, "BAD_REQUEST")
    assert_serving(n)


@pytest.mark.parametrize("query", [
    "key=%", "key=%zz", "key=%4", "key=%%%", "key=a%2", "key=%FF%FE", "key=%00", "key=%E2%82",
    "key=%C0%80", "key=%ED%A0%80", "key=+", "key=%0D%0A", "key=" + "k" * 4096,
])
def test_odd_key_is_answered_with_json(ck, query):
    """Percent-encoding garbage still names some byte string, which is a key: the answer is 200 with valid JSON."""
    n = node(ck)
    r = n.get("/partitions/key?" + query)
    assert r.status == 200, r
    body = json.loads(r.body)  # UTF-8 JSON even when the key's bytes are not UTF-8
    assert isinstance(body["key"], str), body
    assert body["partition_id"].startswith("partition-"), body
    assert_serving(n)


# ---------------------------------------------------------------------------
# Slow clients and connection floods
# ---------------------------------------------------------------------------

SLOW_REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: trickle trickle trickle\r\n\r\n"


def trickle(port, data, interval=1.0):
    """Sends data one byte per `interval` seconds until the server answers or
    closes; returns (reply or None, bytes sent)."""
    with socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT) as s:
        sent = 0
        for b in data:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            readable, _, _ = select.select([s], [], [], interval)
            if readable:
                break
        return read_reply(s), sent


def test_slow_loris_is_cut_off_with_408(ck):
    """A client sending its headers one byte a second gets a 408 JSON error at HEADER_TIMEOUT, and others are served meanwhile."""
    n = node(ck, HEADER_TIMEOUT=1)
    others = []
    try:
        # A few idle connections that never finish their request line.
        for _ in range(3):
            s = socket.create_connection((HOST, n.http_port), timeout=HTTP_TIMEOUT)
            s.sendall(b"GET /he")
            others.append(s)
        assert_serving(n)
        r, sent = trickle(n.http_port, SLOW_REQUEST)
        assert_json_error(r, 408, "TIMEOUT")
        assert sent < len(SLOW_REQUEST), "the slow client was never cut off"
        for s in others:  # they ran out of time too
            assert_json_error(read_reply(s), 408, "TIMEOUT")
    finally:
        for s in others:
            s.close()
    assert_serving(n)


def test_slow_body_is_cut_off_with_408(ck):
    """A client sending its body one byte a second gets a 408 JSON error at BODY_TIMEOUT."""
    n = node(ck, BODY_TIMEOUT=1)
    with socket.create_connection((HOST, n.http_port), timeout=HTTP_TIMEOUT) as s:
        s.sendall(request(b"POST /sync HTTP/1.1", b"Content-Length: 40"))
        for _ in range(40):
            try:
                s.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([s], [], [], 1.0)
            if readable:
                break
        assert_json_error(read_reply(s), 408, "TIMEOUT")
    assert_serving(n)


def test_silent_connection_is_closed(ck):
    """A client that connects and sends nothing is closed at HEADER_TIMEOUT without an answer."""
    n = node(ck, HEADER_TIMEOUT=1)
    with socket.create_connection((HOST, n.http_port), timeout=HTTP_TIMEOUT) as s:
        assert read_reply(s) is None
    assert_serving(n)


def _held_connection(port):
    """A keep-alive connection that has been served once, so the server counts it."""
    for _ in range(50):  # a connection closed just before may not be reaped yet
        s = socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT)
        s.sendall(request(b"GET /health HTTP/1.1", b"Host: x"))
        r = read_reply(s)
        if r is not None and r.status == 200:
            return s
        s.close()
        time.sleep(0.1)
    raise AssertionError("could not open a served connection")


def test_too_many_connections_get_503_and_the_node_recovers(ck):
    """Past MAX_CONNECTIONS new connections get a 503 JSON error, held ones are still served, and new ones are served once they close."""
    n = node(ck, MAX_CONNECTIONS=MAX_CONNECTIONS, HEADER_TIMEOUT=10)
    held, extra = [], []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(_held_connection(n.http_port))
        # Twenty more at once: each is answered 503 and closed.
        for _ in range(20):
            extra.append(socket.create_connection((HOST, n.http_port), timeout=HTTP_TIMEOUT))
        for s in extra:
            assert_json_error(read_reply(s), 503, "TOO_MANY_CONNECTIONS")
        # The connections already in are still served.
        for s in held:
            s.sendall(request(b"GET /health HTTP/1.1", b"Host: x"))
            r = read_reply(s)
            assert r is not None and r.status == 200, r
    finally:
        for s in held + extra:
            s.close()
    # Once they are gone, new clients are served again (the server notices
    # the closes asynchronously: poll, bounded).
    last = None
    for _ in range(50):
        try:
            last = n.get("/health")
            if last.status == 200:
                break
        except OSError as e:
            last = e
        time.sleep(0.1)
    assert getattr(last, "status", None) == 200, last
    assert_serving(n)
