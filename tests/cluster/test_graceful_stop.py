"""A graceful stop (SIGTERM to ckrun) is committed as status `stopped`, not
suspect and down as a crash is: every status the other nodes show is
recorded while it happens, its primaries move, hooks, /metrics,
/health/detailed and ckctl say `stopped`, and a restart makes it active.
A SIGKILLed node still goes suspect -> down.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_graceful_stop.py
"""

import os
import re
import signal
import subprocess

from ckharness import BUILD_DIR, ck  # noqa: F401  (ck: the fixture)
from ckcluster import Cluster, partitions_of, probe, wait_for, node_statuses

CKCTL = os.path.join(BUILD_DIR, "ckctl")

# Records node_leave / node_rejoin hooks, served at /events.
HOOK_APP = r"""
local clusterkit = require "clusterkit"
local json = clusterkit.json
local ck = clusterkit.new()
local events = {}
for _, ev in ipairs({"node_leave", "node_rejoin"}) do
  ck:on(ev, function(info)
    events[#events + 1] = {event = ev, node = info.node.id, reason = info.reason or json.null,
                           previous = info.previous or json.null}
  end)
end
ck:route("GET", "/events", function(_, res) return res:json({events = json.array(events)}) end)
assert(ck:start())
"""

# Replica slots of a stopped node move after REBALANCE_DELAY: longer than
# DOWN_AFTER (1.5 s), so waiting for them also watches the statuses past
# the point where silence alone would have marked the node down.
ENV = {"PARTITION_COUNT": "8", "REPLICATION_FACTOR": "2", "REBALANCE_DELAY": "3"}


class StatusLog:
    """The distinct statuses of one node, in the order each observer's
    /nodes showed them, from every look()."""

    def __init__(self, node_id, observers):
        self.node_id = node_id
        self.observers = observers
        self.seen = {o.name: [] for o in observers}

    def look(self):
        for o in self.observers:
            st = (node_statuses(o) or {}).get(self.node_id)
            got = self.seen[o.name]
            if st and (not got or got[-1] != st):
                got.append(st)
        return self.seen

    def wait(self, pred, what, timeout=30):
        """Looks until pred(seen) holds (bounded), then returns seen."""
        return wait_for(lambda: pred(self.look()) and self.seen, timeout=timeout,
                        what="%s (seen: %r)" % (what, self.seen))

    def last_is(self, status):
        return lambda seen: all(s and s[-1] == status for s in seen.values())


def owned_by(node, node_id, primary_only):
    """Partitions in node's /partitions that node_id owns (as primary only,
    or in any slot); None when node does not answer or a row lacks a primary."""
    parts = partitions_of(node)
    if not parts or any(not p["primary_node"] for p in parts):
        return None
    return [p["id"] for p in parts
            if p["primary_node"] == node_id or (not primary_only and node_id in p["replica_nodes"])]


def events_of(node):
    j = probe(node, "/events")
    return [] if j is None else j["events"]


def ckctl(node, *args):
    e = {k: v for k, v in os.environ.items() if k not in ("CK_ADDR", "CLUSTER_TOKEN", "READ_TOKEN")}
    e["CK_ADDR"] = node.http_addr
    r = subprocess.run([CKCTL] + list(args), env=e, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r
    return r.stdout


def marked(node, node_id):
    """The statuses node's log says it committed for node_id, with why."""
    return re.findall(r"marked %s (\w+) \(([^)]*)\)" % re.escape(node_id), node.log_text())


def test_sigterm_follower_is_stopped_then_active_again(ck):
    """SIGTERM to a follower: the others show it stopped and never suspect or down, its primaries (then its replica slots) move to them, hooks, /metrics, /health/detailed and ckctl say stopped; restarted with its data dir it is active again."""
    app = os.path.join(str(ck.tmp_path), "hooks.lua")
    with open(app, "w") as f:
        f.write(HOOK_APP)
    c = Cluster(ck, env=ENV, args=[app])
    c.start(3)
    c.wait_converged(members=True)
    lead = c.leader()
    others = c.followers()
    victim = others[0]
    watcher = others[1]
    observers = [lead, watcher]
    assert owned_by(lead, victim.node_id, primary_only=True), partitions_of(lead)
    log = StatusLog(victim.node_id, observers)
    log.look()

    os.kill(victim.pid, signal.SIGTERM)
    log.wait(log.last_is("stopped"), "both survivors to show %s stopped" % victim.node_id)
    assert victim.wait_exit(10) == 0, victim.log_tail()
    for o in observers:
        wait_for(lambda: owned_by(o, victim.node_id, primary_only=True) == [],
                 what="%s: no primary left on %s" % (o.name, victim.node_id))
    # Past REBALANCE_DELAY its replica slots move too; it stays stopped.
    log.wait(lambda seen: log.last_is("stopped")(seen) and all(
        owned_by(o, victim.node_id, primary_only=False) == [] for o in observers),
        "%s to own nothing" % victim.node_id)
    assert log.seen == {o.name: ["active", "stopped"] for o in observers}, log.seen
    assert marked(lead, victim.node_id) == [("stopped", "graceful stop")], lead.log_tail()

    for o in observers:
        assert any(e["event"] == "node_leave" and e["node"] == victim.node_id and e["reason"] == "stopped"
                   for e in events_of(o)), events_of(o)
        metrics = o.get("/metrics").text
        assert 'clusterkit_nodes{status="stopped"} 1' in metrics.splitlines(), metrics
        assert 'clusterkit_nodes{status="down"} 0' in metrics.splitlines(), metrics
        by = o.get_json("/health/detailed")["nodes"]["by_status"]
        assert by == {"active": 2, "stopped": 1}, by
    members = ckctl(watcher, "members")
    assert re.search(r"^%s\s+stopped\s" % re.escape(victim.node_id), members, re.M), members
    status = ckctl(watcher, "status")
    assert re.search(r"^nodes\s+3: active 2, stopped 1$", status, re.M), status

    victim.start()
    log.wait(log.last_is("active"), "both survivors to show %s active again" % victim.node_id)
    c.wait_converged(members=True)
    assert log.seen == {o.name: ["active", "stopped", "active"] for o in observers}, log.seen
    for o in observers:
        wait_for(lambda: any(e["event"] == "node_rejoin" and e["node"] == victim.node_id
                             and e["previous"] == "stopped" for e in events_of(o)),
                 what="%s: node_rejoin of %s after its stop" % (o.name, victim.node_id))
    # The leader said why, both ways.
    assert marked(lead, victim.node_id) == [("stopped", "graceful stop"), ("active", "heartbeat")], \
        lead.log_tail()


def test_sigterm_leader_is_stopped_on_the_new_leader(ck):
    """SIGTERM to the leader: it hands over, announces its stop to the new leader, and the survivors show it stopped, never suspect or down."""
    c = Cluster(ck, env=ENV)
    c.start(3)
    c.wait_converged(members=True)
    old = c.leader()
    rest = [n for n in c.nodes if n is not old]
    log = StatusLog(old.node_id, rest)
    log.look()

    os.kill(old.pid, signal.SIGTERM)
    log.wait(log.last_is("stopped"), "both survivors to show the old leader stopped")
    assert old.wait_exit(10) == 0, old.log_tail()
    new = c.leader(nodes=rest)
    assert new is not old
    # Watch on until its replica slots have moved (past DOWN_AFTER).
    log.wait(lambda seen: log.last_is("stopped")(seen) and all(
        owned_by(o, old.node_id, primary_only=False) == [] for o in rest), "%s to own nothing" % old.node_id)
    assert log.seen == {o.name: ["active", "stopped"] for o in rest}, log.seen
    assert marked(new, old.node_id) == [("stopped", "graceful stop")], new.log_tail()


def test_sigkill_is_still_suspect_then_down(ck):
    """SIGKILL to a follower is a crash: the leader marks it suspect, then down, never stopped."""
    c = Cluster(ck, env=ENV)
    c.start(3)
    c.wait_converged(members=True)
    lead = c.leader()
    victim = c.followers()[0]
    log = StatusLog(victim.node_id, [n for n in c.nodes if n is not victim])
    log.look()

    victim.kill9()
    victim.check_exit = False
    log.wait(log.last_is("down"), "both survivors to show %s down" % victim.node_id)
    wait_for(lambda: owned_by(lead, victim.node_id, primary_only=False) == [],
             what="%s to own nothing" % victim.node_id)
    log.look()
    assert all("stopped" not in s and s[-1] == "down" for s in log.seen.values()), log.seen
    assert [st for st, _ in marked(lead, victim.node_id)] == ["suspect", "down"], lead.log_tail()
    assert all(why.startswith("silent for ") for _, why in marked(lead, victim.node_id)), lead.log_tail()
