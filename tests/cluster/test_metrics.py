"""/metrics on a real four-node cluster: raft commit and apply histograms,
elections, membership changes, hook and placement policy failures, each
counted after the activity that feeds it (joins, a rebalance, the leader
killed with SIGKILL, a standby promoted). promtool checks the text when it
is installed.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_metrics.py
"""

import os

from ckharness import ck, metric, promtool_check  # noqa: F401  (ck: the fixture)
from ckcluster import PROBE_TIMEOUT, Cluster, wait_for

# Every node: a node_join hook that raises, and a placement policy that
# raises (so the leader falls back to the built-in one every time).
APP = r"""
local clusterkit = require "clusterkit"
local ck = clusterkit.new()
ck:on("node_join", function() error("hook boom") end)
ck:set_placement(function() error("policy boom") end)
assert(ck:start())
"""

COMMITS = "clusterkit_raft_commit_duration_seconds_count"
APPLIES = "clusterkit_raft_apply_duration_seconds_count"
ELECTIONS = "clusterkit_raft_elections_total"
WON = "clusterkit_raft_elections_won_total"
POLICY_ERRORS = 'clusterkit_placement_policy_errors_total{reason="error"}'
POLICY_RUNS = "clusterkit_placement_policy_duration_seconds_count"
JOIN_HOOK_ERRORS = 'clusterkit_hook_errors_total{hook="node_join"}'
JOIN_HOOK_RUNS = 'clusterkit_hook_duration_seconds_count{hook="node_join"}'


def changes(kind):
    return 'clusterkit_membership_changes_total{kind="%s"}' % kind


def scrape(node):
    """node's /metrics text (raises OSError when it does not answer: a
    wait_for poll counts that as not yet)."""
    r = node.get("/metrics", timeout=PROBE_TIMEOUT)
    assert r.status == 200, r
    return r.text


def value(node, name):
    return metric(scrape(node), name)


def test_metrics_after_joins_rebalance_and_leader_kill(ck):
    """Joins, hook and policy failures, commits and applies are counted; after
    kill -9 of the leader the new leader counts its election, the survivors
    count the status and role changes they applied, and the text stays valid."""
    app = os.path.join(str(ck.tmp_path), "metrics_app.lua")
    with open(app, "w") as f:
        f.write(APP)
    c = Cluster(ck, args=[app])
    nodes = c.start(4)  # VOTERS=3: the fourth one is a standby.
    c.wait_converged(members=True)
    lead = c.leader()
    first = nodes[0]

    # The first node applied three joins; its hook raised for each one.
    wait_for(lambda: value(first, changes("join")) >= 3, what="three joins counted on %s" % first.name)
    wait_for(lambda: value(first, JOIN_HOOK_ERRORS) >= 3, what="three node_join hook errors on %s" % first.name)
    text = scrape(first)
    assert metric(text, JOIN_HOOK_RUNS) >= metric(text, JOIN_HOOK_ERRORS)
    for n in nodes:
        assert value(n, APPLIES) > 0, n.name

    text = scrape(lead)
    assert metric(text, COMMITS) > 0
    assert metric(text, WON) >= 1
    assert metric(text, ELECTIONS) >= metric(text, WON)
    assert metric(text, POLICY_ERRORS) >= 1
    assert metric(text, POLICY_RUNS) >= metric(text, POLICY_ERRORS)
    # A rebalance runs the policy once more, within the request.
    before = metric(text, POLICY_ERRORS)
    assert lead.post("/rebalance").status == 200
    assert value(lead, POLICY_ERRORS) > before

    survivors = [n for n in nodes if n is not lead]
    before = {n.name: scrape(n) for n in survivors}
    lead.kill9()
    lead.check_exit = False
    new = c.by_id(c.wait_converged(nodes=survivors)["leader"])
    was = before[new.name]
    text = scrape(new)
    assert metric(text, ELECTIONS) > metric(was, ELECTIONS)
    assert metric(text, WON) > metric(was, WON)
    wait_for(lambda: value(new, COMMITS) > metric(was, COMMITS), what="commits on the new leader")
    for n in survivors:
        # The dead leader became suspect and down; the standby was promoted
        # (and the dead voter demoted): every survivor applied both kinds.
        wait_for(lambda: value(n, changes("status")) > metric(before[n.name], changes("status")),
                 what="a status change counted on %s" % n.name)
        wait_for(lambda: value(n, changes("role")) > metric(before[n.name], changes("role")),
                 what="a role change counted on %s" % n.name)
    promtool_check(scrape(new))
