"""Smoke tests of the example apps: examples/hooks/app.lua prints every hook,
examples/zones/app.lua places partitions by zone and prints the table, and
examples/demo.lua (`make demo`) runs the KV store and exits 0.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_examples.py
"""

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
