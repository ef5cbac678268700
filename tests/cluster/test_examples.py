"""Smoke tests of the example apps: examples/hooks/app.lua prints every hook,
examples/zones/app.lua places partitions by zone and prints the table,
examples/demo.lua (`make demo`) runs the KV store and exits 0, and the
coordination examples: examples/scheduler (a job on exactly one node through
ck:elect) and examples/flags (feature flags followed through a KV watch).

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_examples.py
"""

import json
import os
import re

from ckharness import SOURCE_DIR, ck  # noqa: F401  (the fixture)
from ckcluster import Cluster, probe, wait_for

EXAMPLES = os.path.join(SOURCE_DIR, "examples")
HOOKS_APP = os.path.join(EXAMPLES, "hooks", "app.lua")
ZONES_APP = os.path.join(EXAMPLES, "zones", "app.lua")
DEMO = os.path.join(EXAMPLES, "demo.lua")

HOOKS = ["node_join", "node_leave", "node_rejoin", "leader_change", "cluster_health_change",
         "partition_change", "rebalance_start", "rebalance_complete", "state_change"]


def hook_lines(nodes):
    """{event: [lines]} printed by the hooks app on the given nodes."""
    seen = {h: [] for h in HOOKS}
    for n in nodes:
        for line in n.log_text().splitlines():
            m = re.match(r"\[(\S+)\] (\w+) +(.*)$", line)
            if m and m.group(2) in seen:
                seen[m.group(2)].append(line)
    return seen


def test_hooks_app_prints_every_hook(ck):
    """The hooks app prints a line for each of the nine hooks through a join, a kill -9 and a restart."""
    c = Cluster(ck, args=[HOOKS_APP], env={"PARTITION_COUNT": "4"})
    n1, n2, n3 = c.start(3)
    c.wait_converged(members=True)
    n3.kill9()
    c.wait_status(n1, n3.node_id, "down")
    n3.start()
    c.wait_status(n1, n3.node_id, "active")

    def every_hook():
        seen = hook_lines(c.nodes)
        return all(seen.values()) and seen
    seen = wait_for(every_hook, what="a line for every hook")
    assert any("node %s" % n3.node_id in line and "left: down" in line for line in seen["node_leave"])
    assert any(n3.node_id in line and "is back" in line for line in seen["node_rejoin"])
    assert any("this node: gain" in line for line in seen["partition_change"])


def test_zones_app_places_primaries_in_one_zone_and_spreads_owners(ck):
    """With the zone policy every primary is in PRIMARY_ZONE and each partition's owners sit in distinct zones."""
    c = Cluster(ck, args=[ZONES_APP], env={"PRIMARY_ZONE": "zone-a", "PARTITION_COUNT": "8",
                                           "REPLICATION_FACTOR": "3"})
    zones = {}
    for zone in ["zone-a", "zone-b", "zone-c", "zone-a"]:
        n = c.add(env={"ZONE": zone})
        zones[n.node_id] = zone
    c.wait_converged(members=True)

    def placed():
        j = probe(c.nodes[0], "/partitions")
        if not j:
            return None
        for p in j["partitions"]:
            owners = [p["primary_node"]] + p["replica_nodes"]
            if len(owners) != 3 or zones.get(p["primary_node"]) != "zone-a":
                return None
            if len({zones.get(o) for o in owners}) != 3:
                return None
        return j["partitions"]
    parts = wait_for(placed, what="a zone-aware table")
    # Both zone-a nodes lead (balanced within the zone).
    assert {p["primary_node"] for p in parts} == {n for n, z in zones.items() if z == "zone-a"}

    def printed():
        text = c.nodes[0].log_text()
        return ("zone zone-a" in text and "zone zone-c" in text
                and re.search(r"partition-7 +\S+\[zone-a\] \S+\[zone-\w\] \S+\[zone-\w\]", text))
    wait_for(printed, what="the table by zone in %s's output" % c.nodes[0].name)


def test_demo_runs_the_kv_store_and_exits_0(ck, tmp_path):
    """`make demo` (examples/demo.lua) starts three KV nodes, writes via node 1, reads via node 2 and exits 0."""
    r = ck.run(DEMO, timeout=120, env={"DEMO_DIR": str(tmp_path / "demo")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 node(s)" in r.stdout
    assert re.search(r"PUT /kv/\S+ via node-1 -> 200", r.stdout), r.stdout
    assert re.search(r'GET /kv/\S+ via node-2 -> 200 "Ada Lovelace"', r.stdout), r.stdout
    assert re.search(r"lives in partition-\d+ \(epoch \d+\): primary node-\d, replicas", r.stdout), r.stdout
    assert "cluster stopped" in r.stdout


SCHEDULER_APP = os.path.join(EXAMPLES, "scheduler", "app.lua")
FLAGS_APP = os.path.join(EXAMPLES, "flags", "app.lua")


def test_scheduler_runs_each_job_on_exactly_one_node(ck):
    """examples/scheduler: one node schedules; after a kill -9 another takes
    over; the recorded runs are numbered without a gap or a repeat, each by
    the node whose token held the role then, tokens only growing."""
    c = Cluster(ck, args=[SCHEDULER_APP], env={"PARTITION_COUNT": "4", "JOB_INTERVAL": "0.05"})
    c.start(3)
    c.wait_converged(members=True)

    def leader():
        views = [probe(n, "/scheduler") for n in c.live()]
        leaders = [v for v in views if v and v["role"] == "leader"]
        return len(leaders) == 1 and leaders[0]["last"] and leaders[0]
    first = wait_for(leader, what="one scheduler running jobs")
    wait_for(lambda: probe(c.by_id(first["node"]), "/scheduler")["runs_here"] >= 5, what="some runs")
    c.by_id(first["node"]).kill9()
    second = wait_for(lambda: (lambda v: v and v["node"] != first["node"] and v)(leader()),
                      what="another node to take over")
    assert second["token"] > first["token"]
    wait_for(lambda: probe(c.by_id(second["node"]), "/scheduler")["runs_here"] >= 5, what="runs on the new one")
    # Every run recorded once, in order, by the holder of the newest token then.
    observer = c.by_id(second["node"])
    runs = [json.loads(e["value"]) for e in observer.get_json("/v1/kv?prefix=jobs/run/&limit=100000")["entries"]]
    seqs = [r["seq"] for r in runs]
    assert seqs == list(range(1, len(seqs) + 1)), seqs[:20]
    tokens = [r["token"] for r in runs]
    assert tokens == sorted(tokens)
    assert {r["node"] for r in runs} == {first["node"], second["node"]}


def test_flags_follow_the_store_on_every_node(ck):
    """examples/flags: a flag set on one node shows on every node through the watch, and a delete too."""
    c = Cluster(ck, args=[FLAGS_APP], env={"PARTITION_COUNT": "4"})
    c.start(3)
    c.wait_converged(members=True)
    writer = c.nodes[1]
    r = writer.request("PUT", "/v1/kv/flags/new-checkout", body=b"on")
    assert r.status == 200, r
    for n in c.nodes:
        wait_for(lambda: probe(n, "/flags")["flags"].get("new-checkout") == "on", what="the flag on " + n.name)
        assert probe(n, "/hello")["message"] == "hello from the new checkout"
    assert writer.request("DELETE", "/v1/kv/flags/new-checkout").status == 200
    for n in c.nodes:
        wait_for(lambda: "new-checkout" not in probe(n, "/flags")["flags"], what="the delete on " + n.name)
