"""ckctl, the operator CLI, against real ckrun processes: every read command
on a follower, mutations through a follower (NOT_LEADER followed to the
leader), --json, the cluster token, watch seeing a kill, and the errors an
operator gets (unreachable address, missing token, unknown node).

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_ckctl.py
"""

import json
import os
import shutil
import subprocess

from ckharness import BUILD_DIR, ck, free_port  # noqa: F401  (the fixture)
from ckcluster import Cluster, leader_of, node_statuses, probe, wait_for

CKCTL = os.path.join(BUILD_DIR, "ckctl")
TOKEN = "ckctl-test-token"


def ckctl(node, *args, env=None, timeout=30):
    """Runs ckctl against node (a CkNode, or "host:port") to completion."""
    e = {k: v for k, v in os.environ.items() if k not in ("CK_ADDR", "CLUSTER_TOKEN", "READ_TOKEN")}
    e["CK_ADDR"] = node if isinstance(node, str) else node.http_addr
    e.update(env or {})
    return subprocess.run([CKCTL] + list(args), env=e, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def ok(r):
    assert r.returncode == 0, "ckctl exited %d: %s%s" % (r.returncode, r.stdout, r.stderr)
    return r.stdout


def cluster(ck, count=3):
    c = Cluster(ck, env={"CLUSTER_TOKEN": TOKEN, "PARTITION_COUNT": "8", "REPLICATION_FACTOR": "2"})
    c.start(count)
    c.wait_converged(members=True)
    return c


AUTH = {"CLUSTER_TOKEN": TOKEN}


def test_read_commands_on_a_follower(ck):
    c = cluster(ck)
    leader = c.leader()
    f = c.followers()[0]

    out = ok(ckctl(f, "status", env=AUTH))
    assert "leader      %s" % leader.node_id in out, out
    assert "nodes       3: active 3" in out, out

    out = ok(ckctl(f, "members", env=AUTH))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "ZONE", "HTTP", "RAFT"], out
    for n in c.nodes:
        row = next(line for line in lines if line.split()[0] == n.node_id)
        assert "active" in row and n.http_addr in row and n.raft_addr in row, row
        assert ("*" in row.split()) == (n is leader), row

    out = ok(ckctl(f, "leader", env=AUTH))
    assert out.startswith("%s (http %s" % (leader.node_id, leader.http_addr)), out

    parts = json.loads(ok(ckctl(f, "--json", "partitions", env=AUTH)))["cluster"]["partition_map"]["partitions"]
    mine = {p for p, v in parts.items() if f.node_id in [v["primary_node"]] + v["replica_nodes"]}
    out = ok(ckctl(f, "partitions", "--node", f.node_id, env=AUTH))
    assert {line.split()[0] for line in out.splitlines()[1:]} == mine, out

    where = json.loads(ok(ckctl(f, "--json", "where", "user:42", env=AUTH)))
    out = ok(ckctl(f, "where", "user:42", env=AUTH))
    assert out.startswith("key user:42 -> %s" % where["partition_id"]), out
    assert "primary  %s" % where["primary"] in out, out


def test_mutations_through_a_follower_follow_the_leader(ck):
    c = cluster(ck, 4)
    f = c.followers()[0]
    assert "paused" in ok(ckctl(f, "pause", env=AUTH))
    leader = c.leader()
    metrics = leader.get("/metrics", headers={"Authorization": "Bearer " + TOKEN}).text
    assert "clusterkit_rebalance_paused 1" in metrics, metrics
    assert "resumed" in ok(ckctl(f, "resume", env=AUTH))
    plan = json.loads(ok(ckctl(f, "--json", "rebalance", "--plan", env=AUTH)))
    assert "moves" in plan
    ok(ckctl(f, "rebalance", env=AUTH))

    victim = next(n for n in c.nodes if n is not f and n is not leader)
    out = ok(ckctl(f, "leave", victim.node_id, env=AUTH))
    assert "%s left the cluster" % victim.node_id in out, out
    wait_for(lambda: victim.node_id not in [i for i, s in (node_statuses(f) or {}).items() if s == "active"],
             what="%s no longer active" % victim.node_id)


def test_watch_sees_a_kill(ck):
    c = cluster(ck)
    f = c.followers()[0]
    victim = next(n for n in c.nodes if n is not f and n is not c.leader())
    e = {k: v for k, v in os.environ.items() if k not in ("CK_ADDR", "READ_TOKEN")}
    e.update({"CK_ADDR": f.http_addr, "CLUSTER_TOKEN": TOKEN})
    # Until the kill's two status changes (suspect, down) are printed; bounded by --for.
    w = subprocess.Popen([CKCTL, "watch", "--count", "2", "--for", "60"], env=e, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The watcher has read the current state once it prints its first line.
        first = w.stdout.readline()
        assert first.startswith("watching %s" % f.http_addr), first
        victim.kill9()
        out, err = w.communicate(timeout=90)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait(10)
    assert w.returncode == 0, err
    assert "node %s active -> suspect" % victim.node_id in out, out
    assert "node %s suspect -> down" % victim.node_id in out, out


def test_operator_errors(ck):
    c = cluster(ck, 2)
    n = c.nodes[0]

    r = ckctl("127.0.0.1:%d" % free_port(), "status")
    assert r.returncode == 1 and "connection refused" in r.stderr, r

    r = ckctl(n, "pause")
    assert r.returncode == 1 and "401" in r.stderr and "set CLUSTER_TOKEN" in r.stderr, r

    r = ckctl(n, "leave", "no-such-node", env=AUTH)
    assert r.returncode == 1 and "no-such-node" in r.stderr, r

    r = ckctl(n, "frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr, r

    r = ckctl(n, "--help")
    assert r.returncode == 0 and "usage: ckctl" in r.stdout, r


def test_recover_a_cluster_that_lost_two_of_three_voters(ck):
    """Quorum loss: two of three voters die for good (kill -9, never restarted),
    the third cannot elect itself. `ckctl recover` refuses without --yes and on
    a running node; on the stopped survivor it forces the raft configuration to
    that node alone, which then leads, commits again, lets a wiped survivor
    rejoin and removes the lost node."""
    c = Cluster(ck, env={"CLUSTER_TOKEN": TOKEN})
    c.start(3)
    c.wait_converged(members=True)
    keep = c.leader()
    rejoin, lost = [n for n in c.nodes if n is not keep]
    before = keep.get_json("/cluster")["cluster"]
    rejoin.kill9()
    lost.kill9()
    wait_for(lambda: (probe(keep, "/consensus/stats") or {}).get("state") not in ("leader", None),
             what="the survivor to lose leadership (no quorum)")

    args = ["recover", "--data-dir", keep.data_dir, "--node-id", keep.node_id]
    r = ckctl(keep, *args, "--yes")
    assert r.returncode == 1 and "stop it first" in r.stderr, r
    keep.stop()
    r = ckctl(keep, *args)
    assert r.returncode == 1 and "WARNING" in r.stderr and "--yes" in r.stderr, r
    r = ckctl(keep, "recover", "--data-dir", keep.data_dir, "--node-id", "nobody", "--yes")
    assert r.returncode == 1 and "nobody is not a member" in r.stderr, r
    out = ok(ckctl(keep, *args, "--yes"))
    assert "the raft configuration is now %s" % keep.node_id in out, out

    keep.start()
    wait_for(lambda: leader_of(keep) == keep.node_id, what="the recovered node to lead alone")
    after = keep.get_json("/cluster")["cluster"]
    assert after["id"] == before["id"]  # the same cluster, not a new one
    # It commits again: a flag change, and the lost voters get marked down.
    ok(ckctl(keep, "pause", env=AUTH))
    ok(ckctl(keep, "resume", env=AUTH))
    c.wait_status(keep, lost.node_id, "down")

    # The other survivor rejoins with an empty data dir; the lost one is removed.
    shutil.rmtree(rejoin.data_dir)
    rejoin.extra_env.pop("BOOTSTRAP", None)
    rejoin.extra_env["JOIN_ADDR"] = keep.http_addr
    rejoin.start()
    c.wait_status(keep, rejoin.node_id, "active")
    ok(ckctl(keep, "leave", lost.node_id, env=AUTH))
    c.wait_converged(nodes=[keep, rejoin], members=[keep.node_id, rejoin.node_id])
    stats = keep.get_json("/consensus/stats")
    assert stats["voters"] == 2, stats


def table_of(node):
    """{partition id: [primary, replicas...]} from node's /partitions."""
    return {p["id"]: [p["primary_node"]] + p["replica_nodes"]
            for p in node.get_json("/partitions")["partitions"]}


def test_snapshot_save_and_restore_into_a_fresh_cluster(ck, tmp_path):
    """A backup taken through a follower restores into a new cluster (other
    data dirs, ports and cluster id; same node ids, joined in another order)
    with the same table and flags; a cluster of another shape refuses it."""
    env = {"CLUSTER_TOKEN": TOKEN, "PARTITION_COUNT": "16", "REPLICATION_FACTOR": "2"}
    a = Cluster(ck, prefix="a", env=env)
    a.start(3)
    a.wait_converged(members=True)
    ok(ckctl(a.followers()[0], "pause", env=AUTH))
    # KV keys: durable ones (text and binary) are backed up; one attached to
    # a session lives and dies with it and is left out.
    f = a.followers()[1]
    bearer = {"Authorization": "Bearer " + TOKEN}
    for key, value in (("cfg/a", b"1"), ("cfg/bin", b"\xff\x00")):
        assert f.request("PUT", "/v1/kv/" + key, body=value, headers=bearer).status == 200
    sid = f.post("/v1/sessions", body=b'{"ttl": "60s"}', headers=bearer).json()["id"]
    r = f.post("/v1/kv", headers=bearer, body=json.dumps(
        {"ops": [{"type": "put", "key": "eph/x", "value": "1", "session": sid}]}).encode())
    assert r.status == 200, r
    backup = str(tmp_path / "backup.json")
    out = ok(ckctl(a.followers()[0], "snapshot", "save", backup, env=AUTH))
    assert "16 partitions, 3 nodes, 2 keys" in out, out
    snap = json.load(open(backup))
    assert snap["format"] == "clusterkit-snapshot" and snap["flags"]["rebalance_paused"] is True, snap
    original = table_of(a.nodes[0])
    assert {p["id"]: [p["primary_node"]] + p["replica_nodes"] for p in snap["partitions"]} == original

    # The same node ids, joined in the opposite order: its own placement differs.
    b = Cluster(ck, prefix="b", env=env)
    for node_id in ("a3", "a2", "a1"):
        b.add(env={"NODE_ID": node_id})
    b.wait_converged(members=True)
    fresh = table_of(b.nodes[0])
    assert fresh != original, "the fresh cluster placed partitions like the original: the test shows nothing"
    out = ok(ckctl(b.followers()[0], "snapshot", "restore", backup, env=AUTH))
    assert "16 partitions committed" in out and "2 keys" in out, out
    for n in b.nodes:
        assert n.get("/v1/kv/cfg/bin?raw=1&consistent=1").body == b"\xff\x00"
        assert n.get("/v1/kv/eph/x?consistent=1").status == 404

    def restored():
        return all(table_of(n) == original for n in b.nodes)
    wait_for(restored, what="every node of the new cluster holding the restored table")
    metrics = b.leader().get("/metrics", headers={"Authorization": "Bearer " + TOKEN}).text
    assert "clusterkit_rebalance_paused 1" in metrics
    assert b.nodes[0].get_json("/cluster")["cluster"]["id"] != snap["cluster_id"]

    other = Cluster(ck, prefix="c", env=dict(env, PARTITION_COUNT="8"))
    other.start(1)
    r = ckctl(other.nodes[0], "snapshot", "restore", backup, env=AUTH)
    assert r.returncode == 1 and "SNAPSHOT_MISMATCH" in r.stderr and "partition_count is 16" in r.stderr, r
    r = ckctl(other.nodes[0], "snapshot", "restore", str(tmp_path / "nope.json"), env=AUTH)
    assert r.returncode == 1 and "reading" in r.stderr, r
