"""Raft traffic is authenticated with the cluster token (issue 9): a node
without the right token can neither join, vote nor lead, and the healthy
nodes stay active; raft addresses may be hostnames.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_raft_auth.py
"""

import re

from ckharness import CkNode, ck  # noqa: F401  (ck: the fixture)
from ckcluster import Cluster, node_statuses, probe, wait_for

TOKEN = "good-token-0123456789"
BAD = "bad-token-9876543210"


class Watch:
    """Polls a node's /consensus/stats (through every wait of the test) and
    remembers the worst it ever saw: a leader role, a known leader, a term."""

    def __init__(self, node):
        self.node = node
        self.states = set()
        self.leaders = set()
        self.terms = []

    def look(self):
        s = probe(self.node, "/consensus/stats")
        if s:
            self.states.add(s.get("state"))
            if s.get("leader_addr"):
                self.leaders.add(s["leader_addr"])
            self.terms.append(s.get("term"))
        return s


def logged(node, pattern):
    return re.search(pattern, node.log_text()) is not None


def test_wrong_token_member_never_votes_or_leads(ck):
    """A member restarted with the same data dir and a different token stays
    cut off from raft: it never leads, never learns a leader, never gets a
    vote (its term never moves), even across an election; the healthy nodes
    keep a leader among themselves, stay active, and keep it out of service
    (stopped: its graceful stop was the last they heard from it)."""
    c = Cluster(ck, env={"CLUSTER_TOKEN": TOKEN})
    c.start(3)
    c.wait_converged(members=True)
    leader = c.leader()
    victim = [n for n in c.nodes if n is not leader][0]
    healthy = [n for n in c.nodes if n is not victim]

    victim.stop()
    victim.extra_env["CLUSTER_TOKEN"] = BAD
    victim.check_exit = False  # It may give up starting on its own.
    victim.start(wait=False)
    w = Watch(victim)
    first = wait_for(w.look, what="the restarted member to answer HTTP")
    term0 = first["term"]

    def campaigned_and_out():
        w.look()
        if w.leaders:
            return True  # Raft let it in: the assertions below say so.
        return (logged(victim, r"raft handshake with \S+ refused: the peer does not know the cluster token")
                and all(node_statuses(n).get(victim.node_id) == "stopped" for n in healthy))
    wait_for(campaigned_and_out, what="the wrong-token member to campaign (refused) and stay stopped")

    # An election: the old leader stops and comes back. With raft open to it,
    # the wrong-token member could vote, or win, while the leader is away.
    other = [n for n in healthy if n is not leader][0]
    leader.stop()
    wait_for(lambda: w.look() and (probe(other, "/consensus/stats") or {}).get("leader_id") != leader.node_id,
             what="%s to notice that the leader is gone" % other.name)
    leader.start(wait=False)

    def healthy_again():
        w.look()
        a = c.agreement(nodes=healthy)
        if not a or a["leader"] == victim.node_id:
            return None
        st = [node_statuses(n) for n in healthy]
        if any(s is None for s in st):
            return None
        if any(s.get(n.node_id) != "active" for s in st for n in healthy):
            return None
        if any(s.get(victim.node_id) != "stopped" for s in st):
            return None
        return a
    agreed = wait_for(healthy_again, what="the healthy nodes to agree on a leader, all active")
    w.look()

    assert agreed["leader"] in {n.node_id for n in healthy}
    assert victim.running(), victim.log_tail()
    assert "leader" not in w.states, w.states
    assert not w.leaders, "the wrong-token member learnt a leader: %s" % w.leaders
    assert all(t == term0 for t in w.terms if t is not None), "its term moved: %s" % sorted(set(w.terms))
    # Both sides refused the raft connections, and said so.
    assert logged(victim, r"raft handshake with \S+ refused: the peer does not know the cluster token"), \
        victim.log_tail()
    assert logged(other, r"raft handshake (from|with) \S+ refused"), other.log_tail()
    # No healthy node ever voted it in or followed it.
    for n in healthy:
        s = probe(n, "/consensus/stats")
        assert s and s["leader_id"] != victim.node_id, s


def test_wrong_token_cannot_join(ck):
    """A new node with the wrong token never enters the cluster: not in raft's
    configuration, not in /nodes."""
    c = Cluster(ck, env={"CLUSTER_TOKEN": TOKEN})
    c.start(2)
    c.wait_converged(members=True)
    before = probe(c.nodes[0], "/consensus/stats")
    intruder = c.add(env={"CLUSTER_TOKEN": BAD}, wait=False)
    intruder.check_exit = False
    wait_for(lambda: not intruder.running(), what="the intruder to give up")
    assert intruder.last_exit != 0 or intruder.wait_exit(10) != 0
    assert logged(intruder, r"join refused"), intruder.log_tail()
    for n in c.nodes[:2]:
        st = node_statuses(n)
        assert st is not None and intruder.node_id not in st, st
        s = probe(n, "/consensus/stats")
        assert s["voters"] + s["standbys"] + s["spares"] == before["voters"] + before["standbys"] + before["spares"], s
    s = probe(intruder, "/consensus/stats")
    assert s is None or not s["leader_id"], s


def test_unresolvable_raft_addr_fails_clearly(ck):
    """RAFT_ADDR with a name that does not resolve stops the start with a
    message naming the address."""
    port = CkNode("probe", ck.tmp_path).raft_port
    n = ck.node("n1", env={"BOOTSTRAP": "true", "RAFT_ADDR": "no-such-host.invalid:%d" % port}, start=False)
    n.check_exit = False
    n.spawn()
    code = n.wait_exit(30)
    assert code not in (None, 0), n.log_tail()
    assert logged(n, r"cannot resolve no-such-host\.invalid:%d" % port), n.log_tail()


class NamedNode(CkNode):
    """A node whose RAFT_ADDR is localhost:<port> instead of an IP."""

    @property
    def raft_addr(self):
        return "localhost:%d" % self.raft_port


def test_hostname_raft_addr(ck):
    """Two nodes whose raft addresses are hostnames (localhost:PORT) form a
    cluster with a token: the address is resolved when connecting."""
    env = {"CLUSTER_TOKEN": TOKEN, "HEARTBEAT_INTERVAL": "0.2", "SUSPECT_AFTER": "0.75", "DOWN_AFTER": "1.5"}
    a = NamedNode("h1", ck.tmp_path, env=dict(env, BOOTSTRAP="true"))
    ck.nodes.append(a)
    a.start()
    b = NamedNode("h2", ck.tmp_path, env=dict(env, JOIN_ADDR=a.http_addr))
    ck.nodes.append(b)
    b.start()
    c = Cluster(ck)
    c.nodes = [a, b]
    agreed = c.wait_converged(members=True)
    assert agreed["leader"] in ("h1", "h2")
    s = probe(a, "/consensus/stats")
    assert s["voters"] + s["standbys"] + s["spares"] == 2, s
