"""One real ckrun node: the built-in HTTP API, key routing, bad input,
persistence across kill -9, signals, options and Lua apps.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q test_single_node.py
"""

import hashlib
import json
import os
import re
import signal
import socket
import urllib.parse

import pytest

import ckharness
from ckharness import ck  # noqa: F401  (the fixture)
from ckharness import (HarnessError, metric, parse_raw_response, port_is_free, promtool_check, raw_request)

DEFAULT_PARTITIONS = 16

# Keys routed in the hashing tests: plain, tagged, with characters that need
# percent-encoding in a query, non-ASCII, long.
KEYS = [
    "user:123", "order-42", "abc", "x", "a b&c=d+e?f#g", "ключ-🔑", "user:{42}:a",
    "user:{42}:b", "a{}b", "{x}", "k" * 300,
]

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def hashed_bytes(key, tags):
    """The bytes the documented hash-tag rule hashes (runtime/ck_hash.h)."""
    if tags:
        open_at = key.find(b"{")
        if open_at >= 0:
            close_at = key.find(b"}", open_at + 1)
            if close_at > open_at + 1:
                return key[open_at + 1:close_at]
    return key


def spec_fnv1a64_partition(key, partitions, tags=True):
    """FNV-1a 64 + fmix64, mod partitions, as specified in runtime/ck_hash.h."""
    h = 0xcbf29ce484222325
    for b in hashed_bytes(key, tags):
        h ^= b
        h = (h * 0x100000001b3) & MASK64
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & MASK64
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & MASK64
    h ^= h >> 33
    return h % partitions


def go_md5_partition(key, partitions):
    """The Go ClusterKit's mapping: big-endian uint32 of md5(key)[0:4] mod P."""
    return int.from_bytes(hashlib.md5(key).digest()[:4], "big") % partitions


def key_partition(node, key):
    """GET /partitions/key for `key` (str or bytes): the 0-based partition index."""
    r = node.get("/partitions/key?key=" + urllib.parse.quote(key, safe=""))
    assert r.status == 200, r
    body = r.json()
    m = re.fullmatch(r"partition-(\d+)", body["partition_id"])
    assert m, body
    assert body["partition"]["id"] == body["partition_id"]
    return int(m.group(1))


def lua_partitions(ck, keys, partitions, algorithm=None):
    """Partitions of `keys` computed by clusterkit.partition_of in `ckrun -e`."""
    keys_json = json.dumps(keys)
    assert "]==]" not in keys_json
    algo = '"%s"' % algorithm if algorithm else "nil"
    code = (
        'local ck = require("clusterkit")\n'
        'local keys = require("clusterkit.json").decode([==[%s]==])\n'
        'for _, k in ipairs(keys) do io.write(ck.partition_of(k, %d, %s), "\\n") end\n'
    ) % (keys_json, partitions, algo)
    out = ck.lua(code).split()
    assert len(out) == len(keys), out
    return [int(x) for x in out]


def assert_error_json(r, status, code=None):
    """r is a JSON error answer {"error": {"code", "message"}} with `status`."""
    assert r.status == status, r
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def stable_cluster(body):
    """A /cluster body without the fields that may change across a restart."""
    body = json.loads(json.dumps(body))
    body.pop("state_index", None)
    return body


# ---------------------------------------------------------------------------
# The built-in API on a fresh bootstrap node
# ---------------------------------------------------------------------------

def test_health_and_ready(ck):
    """A fresh bootstrap node reports itself healthy and ready, with itself as leader."""
    n = ck.node("node-1")
    assert n.get_json("/health") == {"status": "healthy", "node_id": "node-1"}
    ready = n.get_json("/ready")
    assert ready["ready"] is True
    assert ready["initialized"] is True
    assert ready["registered"] is True
    assert ready["node_id"] == "node-1"
    assert ready["leader"] == "node-1"


def test_cluster_shape(ck):
    """GET /cluster has the seed's shape: one active node, 16 partitions all owned by it, default config and fnv1a64 hash_config."""
    n = ck.node("node-1")
    r = n.get("/cluster")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    c = body["cluster"]

    assert isinstance(c["id"], str) and re.fullmatch(r"[0-9a-f]{8,}", c["id"]), c["id"]
    assert c["name"] == "my-cluster"
    assert c["config"] == {"cluster_name": "my-cluster", "partition_count": DEFAULT_PARTITIONS,
                           "replication_factor": 3}

    assert isinstance(c["nodes"], list) and len(c["nodes"]) == 1
    me = c["nodes"][0]
    assert me["id"] == "node-1"
    assert me["name"] == "node-1"
    assert me["ip"] == n.http_addr
    assert me["status"] == "active"
    assert isinstance(me["services"], dict)
    assert me["raft_addr"] == n.raft_addr

    parts = c["partition_map"]["partitions"]
    assert isinstance(parts, dict)
    assert sorted(parts) == sorted("partition-%d" % i for i in range(DEFAULT_PARTITIONS))
    for pid, p in parts.items():
        assert p["id"] == pid
        assert p["primary_node"] == "node-1"
        assert p["replica_nodes"] == []
        assert isinstance(p["epoch"], int) and p["epoch"] >= 1

    hc = body["hash_config"]
    assert hc["algorithm"] == "fnv1a64"
    assert hc["partition_count"] == DEFAULT_PARTITIONS
    assert hc["hash_tags"] is True

    assert isinstance(body["state_index"], int) and body["state_index"] > 0
    assert r.headers["ETag"] == '"%d"' % body["state_index"]


def test_partitions_and_stats(ck):
    """GET /partitions lists the 16 partitions in order and /partitions/stats counts them all as the node's primaries."""
    n = ck.node("node-1")
    body = n.get_json("/partitions")
    assert body["total"] == DEFAULT_PARTITIONS
    assert [p["id"] for p in body["partitions"]] == ["partition-%d" % i for i in range(DEFAULT_PARTITIONS)]
    for p in body["partitions"]:
        assert p["primary_node"] == "node-1"
        assert p["replica_nodes"] == []

    stats = n.get_json("/partitions/stats")
    assert stats["total_partitions"] == DEFAULT_PARTITIONS
    assert stats["partitions_per_node"] == {"node-1": DEFAULT_PARTITIONS}
    assert stats["replicas_per_node"] == {"node-1": 0}
    assert stats["nodes"] == 1
    assert stats["replication_factor"] == 3


def test_health_detailed(ck):
    """GET /health/detailed describes the node, its raft state and the node counts."""
    n = ck.node("node-1")
    d = n.get_json("/health/detailed")
    assert d["status"] == "healthy"
    assert d["node_id"] == "node-1"
    assert d["leader"] == "node-1"
    assert d["me"]["id"] == "node-1" and d["me"]["ip"] == n.http_addr and d["me"]["status"] == "active"
    assert d["raft"]["state"] == "leader"
    assert d["raft"]["term"] >= 1
    assert d["nodes"] == {"total": 1, "by_status": {"active": 1}}
    assert d["partitions"] == DEFAULT_PARTITIONS
    assert isinstance(d["state_index"], int) and d["state_index"] > 0


def test_consensus_leader_and_stats(ck):
    """The consensus endpoints agree: this node leads, in one term >= 1, with committed and applied entries."""
    n = ck.node("node-1")
    leader = n.get_json("/consensus/leader")
    stats = n.get_json("/consensus/stats")

    assert leader["leader_id"] == "node-1"
    assert leader["leader_name"] == "node-1"
    assert leader["leader_ip"] == n.http_addr
    assert leader["raft_addr"] == n.raft_addr
    assert leader["is_me"] is True
    assert isinstance(leader["term"], int) and leader["term"] >= 1

    assert stats["term"] == leader["term"]
    assert stats["state"] == "leader"
    assert stats["leader_id"] == "node-1"
    assert stats["leader_addr"] == n.raft_addr
    assert stats["node_id"] == "node-1"
    assert stats["voters"] == 1
    assert stats["commit_index"] > 0
    assert stats["applied_index"] > 0
    assert stats["applied_index"] <= stats["commit_index"] <= stats["last_log_index"]
    assert 0 < stats["state_index"] <= stats["applied_index"]


def test_nodes_listing_and_paging(ck):
    """GET /nodes lists the one node and honours limit and offset."""
    n = ck.node("node-1")
    body = n.get_json("/nodes")
    assert body["total"] == 1 and body["limit"] == 100 and body["offset"] == 0
    assert [x["id"] for x in body["nodes"]] == ["node-1"]
    assert body["nodes"][0]["ip"] == n.http_addr

    body = n.get_json("/nodes?limit=1&offset=0")
    assert [x["id"] for x in body["nodes"]] == ["node-1"] and body["limit"] == 1

    body = n.get_json("/nodes?offset=1")
    assert body["nodes"] == [] and body["total"] == 1 and body["offset"] == 1


def test_metrics(ck):
    """GET /metrics is Prometheus text with the raft term of /consensus/stats and one active node."""
    n = ck.node("node-1")
    term = n.get_json("/consensus/stats")["term"]
    r = n.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    lines = text.splitlines()
    assert "clusterkit_raft_term %d" % term in lines
    assert 'clusterkit_nodes{status="active"} 1' in lines
    assert 'clusterkit_nodes{status="down"} 0' in lines
    assert 'clusterkit_nodes{status="stopped"} 0' in lines
    assert 'clusterkit_partitions{node="node-1",role="primary"} %d' % DEFAULT_PARTITIONS in lines
    sample = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                        r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? -?[0-9.e+]+')
    for line in lines:
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) \S+ .+", line), line
        else:
            assert sample.fullmatch(line), line


def test_metrics_process_build_and_leader_changes(ck):
    """/metrics carries the process_* series (checked against the process's
    own /proc), clusterkit_build_info with ckrun's version, and the leader
    changes this node saw; promtool accepts it when it is installed."""
    n = ck.node("node-1")
    before = metric(n.get("/metrics").text, 'clusterkit_http_request_duration_seconds_count{route="/health"}') or 0
    for _ in range(3):
        assert n.get("/health").status == 200
    # Counted before the scrape: the server may still hold the sockets of the
    # requests above until it reads their FIN, and close them while the
    # scrape runs, so a count taken after it can be lower than the metric (a
    # run under load saw 19 at the scrape and 16 after). Before the scrape,
    # the only fd still to come is the scrape's own socket.
    fds = len(os.listdir("/proc/%d/fd" % n.pid))
    text = n.get("/metrics").text
    # The latency histogram: cumulative buckets ending in +Inf == count.
    assert metric(text, 'clusterkit_http_request_duration_seconds_count{route="/health"}') == before + 3
    buckets = [float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('clusterkit_http_request_duration_seconds_bucket{route="/health",')]
    assert buckets == sorted(buckets) and buckets[-1] == before + 3, buckets
    assert 'clusterkit_http_request_duration_seconds_bucket{route="/health",le="+Inf"}' in text
    version = ck.run("--version").stdout.split()[-1]
    assert 'clusterkit_build_info{version="%s",' % version in text, text
    assert metric(text, "clusterkit_leader_changes_total") == 1
    with open("/proc/%d/stat" % n.pid) as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = int(next(line for line in f if line.startswith("btime")).split()[1])
    started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    assert abs(metric(text, "process_start_time_seconds") - started) < 0.02
    assert 1 < metric(text, "process_open_fds") <= fds + 2
    assert metric(text, "process_resident_memory_bytes") > 1 << 20
    assert metric(text, "process_cpu_seconds_total") >= 0
    assert metric(text, "process_max_fds") >= fds
    promtool_check(text)


def test_post_sync(ck):
    """POST /sync answers ok with the node's current state index."""
    n = ck.node("node-1")
    index = n.get_json("/cluster")["state_index"]
    r = n.post("/sync", body={})
    assert r.status == 200, r
    body = r.json()
    assert body["status"] == "ok"
    assert body["node_id"] == "node-1"
    assert body["state_index"] == index


def test_etag_if_none_match(ck):
    """A matching If-None-Match gets 304 with no body; a stale one gets the full 200 answer."""
    n = ck.node("node-1")
    for path in ("/cluster", "/partitions", "/partitions/stats"):
        r = n.get(path)
        assert r.status == 200
        etag = r.headers["ETag"]
        assert re.fullmatch(r'"\d+"', etag), etag

        r304 = n.get(path, headers={"If-None-Match": etag})
        assert r304.status == 304, (path, r304)
        assert r304.body == b""
        assert r304.headers["ETag"] == etag

        stale = '"%d"' % (int(etag.strip('"')) + 1000)
        r200 = n.get(path, headers={"If-None-Match": stale})
        assert r200.status == 200 and r200.body == r.body, path


# ---------------------------------------------------------------------------
# Key routing
# ---------------------------------------------------------------------------

def test_partition_for_key_matches_partition_of_and_spec(ck):
    """/partitions/key routes keys exactly as clusterkit.partition_of in `ckrun -e` and the documented FNV-1a/fmix64 spec do."""
    n = ck.node("node-1")
    served = [key_partition(n, k) for k in KEYS]
    lua = lua_partitions(ck, KEYS, DEFAULT_PARTITIONS)
    spec = [spec_fnv1a64_partition(k.encode(), DEFAULT_PARTITIONS) for k in KEYS]
    assert served == lua
    assert served == spec
    # The keys must not all collapse into one partition.
    assert len(set(served)) > 3


def test_hash_tags_colocate_keys(ck):
    """Keys sharing a {tag} land in the partition of the tag itself."""
    n = ck.node("node-1")
    a = key_partition(n, "user:{42}:a")
    b = key_partition(n, "user:{42}:b")
    c = key_partition(n, "order:{42}")
    assert a == b == c == key_partition(n, "42")
    # Other tags route elsewhere, so the rule is not "everything to one partition".
    others = {key_partition(n, "user:{%d}:a" % i) for i in range(40)}
    assert len(others) > 1


def test_partitions_key_answer_shape(ck):
    """GET /partitions/key answers with the key, its partition, primary, replicas and owning nodes."""
    n = ck.node("node-1")
    body = n.get_json("/partitions/key?key=user%3A123")
    assert body["key"] == "user:123"
    assert body["primary"] == "node-1"
    assert body["replicas"] == []
    assert body["partition"]["primary_node"] == "node-1"
    assert body["nodes"] == [{"id": "node-1", "name": "node-1", "ip": n.http_addr,
                              "status": "active", "role": "primary"}]


@pytest.mark.parametrize("key", [b"\x00[]", b"a\x00b", b"[]", b"\xff\xfe", b"\xc3\x28"],
                         ids=["nul-brackets", "nul-inside", "brackets", "invalid-utf8", "bad-utf8-pair"])
def test_partitions_key_answer_is_valid_json_for_odd_keys(ck, key):
    """Odd but well-formed query keys get strict UTF-8 JSON: valid-UTF-8 keys are echoed as strings, others 400 or are escaped."""
    n = ck.node("node-1")
    r = n.get("/partitions/key?key=" + urllib.parse.quote(key, safe=""))
    assert r.status in (200, 400), r
    text = r.body.decode("utf-8")  # JSON is UTF-8 (RFC 8259): raises on raw invalid bytes
    body = json.loads(text)
    if r.status == 200:
        try:
            expected = key.decode("utf-8")
        except UnicodeDecodeError:
            expected = None
        if expected is not None:
            assert body["key"] == expected, body
        else:
            assert isinstance(body["key"], str), body
        assert body["partition_id"] == "partition-%d" % spec_fnv1a64_partition(key, DEFAULT_PARTITIONS)
    else:
        assert_error_json(r, 400)


def test_md5_mapping_matches_go_library(ck):
    """With HASH_ALGORITHM=md5 and PARTITION_COUNT=64, keys map as the Go ClusterKit maps them (md5 prefix mod 64, no tags)."""
    n = ck.node("node-1", env={"HASH_ALGORITHM": "md5", "PARTITION_COUNT": "64"})
    hc = n.get_json("/cluster")["hash_config"]
    assert hc["algorithm"] == "md5"
    assert hc["partition_count"] == 64
    assert hc["hash_tags"] is False
    served = [key_partition(n, k) for k in KEYS]
    expected = [go_md5_partition(k.encode(), 64) for k in KEYS]
    assert served == expected
    assert served == lua_partitions(ck, KEYS, 64, "md5")
    assert len(set(served)) > 3


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def test_partitions_key_without_key_is_400(ck):
    """/partitions/key without a key (or with an empty one) is a 400 JSON error."""
    n = ck.node("node-1")
    assert_error_json(n.get("/partitions/key"), 400, "BAD_REQUEST")
    assert_error_json(n.get("/partitions/key?key="), 400, "BAD_REQUEST")


@pytest.mark.parametrize("query", ["limit=-1", "offset=abc", "limit=99999999999", "limit=0",
                                   "limit=1.5", "offset=-3", "limit="])
def test_nodes_bad_paging_is_400(ck, query):
    """/nodes rejects a negative, huge, fractional or non-numeric limit/offset with a 400 JSON error."""
    n = ck.node("node-1")
    assert_error_json(n.get("/nodes?" + query), 400, "BAD_REQUEST")


def test_unknown_path_is_404_json(ck):
    """An unknown path gets a 404 JSON error."""
    n = ck.node("node-1")
    assert_error_json(n.get("/no/such/path"), 404, "NOT_FOUND")
    assert_error_json(n.post("/nothing-here"), 404, "NOT_FOUND")


def test_wrong_method_is_405_json(ck):
    """A known path with the wrong method gets a 405 JSON error."""
    n = ck.node("node-1")
    assert_error_json(n.post("/health"), 405, "METHOD_NOT_ALLOWED")
    assert_error_json(n.request("DELETE", "/cluster"), 405, "METHOD_NOT_ALLOWED")
    assert_error_json(n.get("/sync"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize("payload", [
    b"GARBAGE\r\n\r\n",
    b"GET /health HTTP/9.9\r\n\r\n",
    b"GET\x00 /health HTTP/1.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
], ids=["no-method", "bad-version", "nul-in-method", "bad-header"])
def test_malformed_request_is_400_and_node_keeps_serving(ck, payload):
    """A malformed request sent over a raw socket gets a 400 JSON answer and the node still serves afterwards."""
    n = ck.node("node-1")
    status, headers, body = parse_raw_response(raw_request(n.http_port, payload))
    assert status == 400
    assert headers.get("content-type", "").startswith("application/json")
    err = json.loads(body)["error"]
    assert err["code"] == "BAD_REQUEST" and err["message"]
    assert n.get_json("/health")["status"] == "healthy"
    assert n.running()


# ---------------------------------------------------------------------------
# Persistence and process lifecycle
# ---------------------------------------------------------------------------

def test_cluster_state_json_written(ck):
    """DATA_DIR holds raft segments and a cluster-state.json that parses and names the same cluster."""
    n = ck.node("node-1")
    cluster = n.get_json("/cluster")
    assert os.path.isdir(os.path.join(n.data_dir, "raft"))
    assert os.listdir(os.path.join(n.data_dir, "raft"))
    # The file is written asynchronously after the commit; stopping waits for
    # the last write, so read it after a graceful stop.
    assert n.stop() == 0
    with open(os.path.join(n.data_dir, "cluster-state.json")) as f:
        state = json.load(f)
    assert state["cluster"]["id"] == cluster["cluster"]["id"]
    assert stable_cluster(state) == stable_cluster(cluster)
    leftovers = [f for f in os.listdir(n.data_dir) if f not in ("raft", "cluster-state.json")]
    assert leftovers == [], "temporary files left in DATA_DIR: %r" % leftovers


def test_kill9_then_restart_keeps_state(ck):
    """After kill -9, a restart with the same DATA_DIR and ports comes back ready with the same cluster id, config, nodes and partition table."""
    n = ck.node("node-1", env={"CLUSTER_NAME": "survivor", "PARTITION_COUNT": "24"})
    before = n.get_json("/cluster")
    assert n.kill9() == -signal.SIGKILL
    assert not n.running()

    n.start()  # same ports, same data dir
    after = n.get_json("/cluster")
    assert after["cluster"]["id"] == before["cluster"]["id"]
    assert after["cluster"]["config"] == before["cluster"]["config"]
    assert after["cluster"]["nodes"] == before["cluster"]["nodes"]
    assert after["cluster"]["partition_map"] == before["cluster"]["partition_map"]
    assert stable_cluster(after) == stable_cluster(before)
    assert after["state_index"] >= before["state_index"]
    assert n.get_json("/ready")["ready"] is True
    assert n.get_json("/consensus/leader")["leader_id"] == "node-1"
    with open(os.path.join(n.data_dir, "cluster-state.json")) as f:
        assert json.load(f)["cluster"]["id"] == before["cluster"]["id"]


def test_sigterm_exits_zero_and_leaves_nothing(ck):
    """SIGTERM stops the node gracefully: exit code 0 within a bound, PID gone, both ports released."""
    n = ck.node("node-1")
    pid = n.pid
    os.kill(pid, signal.SIGTERM)
    code = n.wait_exit(timeout=10)
    assert code is not None, "ckrun did not exit within 10s of SIGTERM\n" + n.log_tail()
    assert code == 0, n.log_tail()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert port_is_free(n.http_port), "HTTP port still bound after exit"
    assert port_is_free(n.raft_port), "raft port still bound after exit"
    log = n.log_text()
    assert "stopped" in log
    assert "handles still open" not in log


def test_sigint_exits_zero(ck):
    """SIGINT stops the node gracefully with exit code 0, like SIGTERM."""
    n = ck.node("node-1")
    os.kill(n.pid, signal.SIGINT)
    code = n.wait_exit(timeout=10)
    assert code == 0, n.log_tail()


def test_options_from_environment(ck):
    """CLUSTER_NAME, PARTITION_COUNT=32 and REPLICATION_FACTOR from the environment show in /cluster and the partition endpoints."""
    n = ck.node("node-7", env={"CLUSTER_NAME": "orders-eu", "PARTITION_COUNT": "32",
                               "REPLICATION_FACTOR": "2", "NODE_NAME": "seven"})
    body = n.get_json("/cluster")
    c = body["cluster"]
    assert c["name"] == "orders-eu"
    assert c["config"] == {"cluster_name": "orders-eu", "partition_count": 32, "replication_factor": 2}
    assert len(c["partition_map"]["partitions"]) == 32
    assert body["hash_config"]["partition_count"] == 32
    assert c["nodes"][0]["id"] == "node-7" and c["nodes"][0]["name"] == "seven"
    assert n.get_json("/partitions")["total"] == 32
    assert n.get_json("/partitions/stats")["replication_factor"] == 2
    parts = [key_partition(n, k) for k in KEYS]
    assert parts == [spec_fnv1a64_partition(k.encode(), 32) for k in KEYS]


@pytest.mark.parametrize("env,option", [
    ({"PARTITION_COUNT": "0"}, "partition_count"),
    ({"PARTITION_COUNT": "abc"}, "partition_count"),
    ({"HASH_ALGORITHM": "sha1"}, "hash_algorithm"),
    ({"HTTP_ADDR": "nonsense"}, "http_addr"),
], ids=["zero-partitions", "non-numeric-partitions", "unknown-hash", "bad-addr"])
def test_invalid_environment_fails_fast(ck, env, option):
    """An invalid option in the environment makes ckrun exit 1, before serving, with a message naming the option."""
    n = ck.node("node-1", env=env, start=False)
    with pytest.raises(HarnessError, match="exited with 1 before it was ready"):
        n.start(timeout=10)
    assert n.last_exit == 1
    log = n.log_text()
    assert list(env)[0] in log or option in log, log


@pytest.mark.parametrize("which", ["http", "raft"])
def test_port_taken_fails_with_clear_message(ck, which):
    """A node whose HTTP or raft port is already taken exits 1 with a message that names the cause."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        kw = {"http_port": port} if which == "http" else {"raft_port": port}
        n = ck.node("node-1", start=False, **kw)
        with pytest.raises(HarnessError, match="exited with 1"):
            n.start(timeout=10)
        log = n.log_text()
        assert re.search(r"EADDRINUSE|address already in use", log, re.I), log
        assert str(port) in log, log


@pytest.mark.parametrize("which", ["http", "raft"])
def test_harness_retries_when_a_picked_port_is_taken(ck, monkeypatch, which):
    """When a port picked by the harness is taken before ckrun binds it, the harness starts the node again on fresh ports."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        real = ckharness.free_port
        handed = []

        def first_taken(avoid=()):
            # The first pick of the chosen kind is the busy port.
            port = taken if len(handed) == (0 if which == "http" else 1) else real(avoid=avoid)
            handed.append(port)
            return port

        monkeypatch.setattr(ckharness, "free_port", first_taken)
        n = ck.node("node-1")
        assert n.starts == 2, n.log_text()
        assert taken not in (n.http_port, n.raft_port)
        assert n.get_json("/health")["status"] == "healthy"
        assert n.get_json("/consensus/leader")["raft_addr"] == n.raft_addr


# ---------------------------------------------------------------------------
# The ckrun command line
# ---------------------------------------------------------------------------

def test_version_and_help(ck):
    """`ckrun --version` prints a version and `ckrun --help` prints the usage, both exiting 0."""
    r = ck.run("--version", timeout=10)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\bckrun\b.*\d+\.\d+\.\d+", r.stdout), r.stdout
    r = ck.run("--help", timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ckrun")
    r = ck.run("--no-such-option", timeout=10)
    assert r.returncode != 0


def test_e_runs_code_and_error_exits_1(ck):
    """`ckrun -e CODE` runs CODE (exit 0) and an error raised in it exits 1 with the message on stderr."""
    r = ck.run("-e", 'io.write(require("clusterkit").partition_of("abc", 16))', timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout == str(spec_fnv1a64_partition(b"abc", 16))
    r = ck.run("-e", 'error("x marks the spot")', timeout=10)
    assert r.returncode == 1
    assert "x marks the spot" in r.stderr


APP = r'''
local clusterkit = require "clusterkit"
local ck = clusterkit.new{
  node_id = os.getenv("NODE_ID"), http_addr = os.getenv("HTTP_ADDR"),
  raft_addr = os.getenv("RAFT_ADDR"), data_dir = os.getenv("DATA_DIR"),
  cluster_name = "app-cluster",
}
ck:route("GET", "/hello/:name", function(req, res)
  res:json({hello = req.params.name})
end)
ck:route("GET", "/boom", function(req, res)
  error("boom from a handler")
end)
assert(ck:start())
'''


def test_lua_app_routes_and_handler_errors(ck):
    """A Lua app's route is served next to the built-in API, and a handler that raises gives a 500 JSON while the node keeps serving."""
    n = ck.app("app-1", APP)
    assert n.get_json("/hello/world") == {"hello": "world"}
    assert n.get_json("/hello/caf%C3%A9") == {"hello": "café"}
    assert n.get_json("/cluster")["cluster"]["name"] == "app-cluster"
    assert_error_json(n.get("/hello"), 404)
    assert_error_json(n.post("/hello/world"), 405)

    assert_error_json(n.get("/boom"), 500)
    assert "boom from a handler" in n.log_text()
    assert n.get_json("/hello/again") == {"hello": "again"}
    assert_error_json(n.get("/boom"), 500)
    assert n.get_json("/health")["status"] == "healthy"
    assert n.running()
    assert n.stop() == 0
