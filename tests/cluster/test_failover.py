"""Leader failover on real processes: what happens between the leader's
death and a new leader, checked by mechanism, never by timing.

* A leader killed with kill -9 closes its raft connections; the followers
  take that as the leader lost and elect a new one without waiting the
  election timeout. With ELECTION_TIMEOUT at 30 s, waiting it out could not
  produce a leader within the 15 s bound below, so a new leader inside the
  bound shows the connection path worked (and the counter says so).
* A leader that stops answering without closing anything (SIGSTOP) is
  replaced by the first survivor whose timer fires: the other survivor,
  which has not heard from the leader for an election timeout, votes for
  it (the Raft thesis's lease, ck_node_vote_lease_over). Under raft 0.15's
  own rule a follower refuses every vote until its own timer has fired and
  made it a candidate, so every such failover had at least two candidacies;
  now most have one.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_failover.py
"""

import os
import signal

from ckharness import ck, metric  # noqa: F401  (ck: the fixture)
from ckcluster import Cluster, probe, wait_for


def counter(node, name):
    r = node.get("/metrics")
    assert r.status == 200, r
    return metric(r.text, name) or 0.0


def candidacies(nodes):
    return sum(counter(n, "clusterkit_raft_elections_total") for n in nodes)


def new_leader(c, survivors, old, timeout):
    """Waits (bounded) until every survivor names the same leader, one of
    them; returns its id."""
    ids = {n.node_id for n in survivors}

    def agreed():
        seen = set()
        for n in survivors:
            s = probe(n, "/consensus/stats")
            if not s:
                return None
            seen.add(s.get("leader_id"))
        lid = seen.pop() if len(seen) == 1 else None
        return lid if lid in ids and lid != old.node_id else None
    return wait_for(agreed, timeout=timeout, what="a new leader among %s" % sorted(ids))


def test_killed_leader_replaced_without_waiting_the_election_timeout(ck):
    c = Cluster(ck, env={"ELECTION_TIMEOUT": "30"})
    c.start(3)
    lead = c.leader()
    survivors = [n for n in c.live() if n is not lead]
    lost_before = sum(counter(n, "clusterkit_raft_leaders_lost_total") for n in survivors)
    lead.kill9()
    new_leader(c, survivors, lead, timeout=15)
    assert sum(counter(n, "clusterkit_raft_leaders_lost_total") for n in survivors) > lost_before
    # A graceful stop would hand leadership over, which at a 30 s election
    # timeout is slow to give up on; this test is about crashes.
    for n in survivors:
        n.kill9()


def test_stopped_leader_lease_lets_the_first_candidate_win(ck):
    c = Cluster(ck)
    c.start(3)
    single = 0
    rounds = []
    for _ in range(3):
        c.wait_converged(members=True)
        lead = c.leader()
        survivors = [n for n in c.live() if n is not lead]
        before = candidacies(survivors)
        os.kill(lead.pid, signal.SIGSTOP)
        try:
            new_leader(c, survivors, lead, timeout=20)
            # The winner's own candidacy is counted when it became one; a
            # second survivor's would have been counted by then too.
            n = candidacies(survivors) - before
        finally:
            os.kill(lead.pid, signal.SIGCONT)
        rounds.append(n)
        single += n == 1
    # Under raft 0.15's rule every round has >= 2; with the lease, a round
    # has 2 only when both timers fired within a round trip of each other.
    assert single >= 1, "candidacies per failover: %s" % rounds
