"""Unit tests of the history checkers (checks.py) on hand-made histories:
each one passes a good history and catches a bad one.

Run: python3 -m unittest tests/faults/test_checks.py (or pytest).
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks  # noqa: E402
from harness import History, unbalanced  # noqa: E402


def stats(t, node, term, state, slot=1, inc=1):
    return {"t": t, "node": node, "slot": slot, "inc": inc, "kind": "stats", "term": term,
            "state": state, "leader": None, "state_index": 1}


def cluster(t, node, index, parts, statuses=None, slot=1, inc=1, digest=None):
    return {"t": t, "node": node, "slot": slot, "inc": inc, "kind": "cluster", "state_index": index,
            "digest": digest or repr(sorted(parts.items())), "statuses": statuses or {},
            "parts": parts}


class Checks(unittest.TestCase):
    def test_two_leaders(self):
        h = History()
        h.samples = [stats(1, "a", 1, "leader"), stats(2, "b", 2, "leader", slot=2),
                     stats(3, "a", 2, "follower")]
        self.assertEqual(checks.two_leaders(h), [])
        h.samples.append(stats(4, "c", 2, "leader", slot=3))
        self.assertEqual(len(checks.two_leaders(h)), 1)

    def test_two_leaders_with_one_id_in_two_processes(self):
        h = History()
        h.samples = [stats(1, "a", 3, "leader", slot=1), stats(2, "a", 3, "leader", slot=4)]
        self.assertEqual(len(checks.two_leaders(h)), 1)

    def test_primaries_per_epoch(self):
        h = History()
        h.samples = [cluster(1, "a", 5, {"partition-0": ("a", ("b",), 3)}),
                     cluster(2, "b", 6, {"partition-0": ("b", ("a",), 4)}, slot=2)]
        self.assertEqual(checks.primaries_per_epoch(h), [])
        h.samples.append(cluster(3, "c", 7, {"partition-0": ("c", ("a",), 4)}, slot=3))
        self.assertEqual(len(checks.primaries_per_epoch(h)), 1)

    def test_tables_per_index(self):
        h = History()
        h.samples = [cluster(1, "a", 5, {}, digest="x"), cluster(2, "b", 5, {}, digest="x", slot=2)]
        self.assertEqual(checks.tables_per_index(h), [])
        h.samples.append(cluster(3, "c", 5, {}, digest="y", slot=3))
        self.assertEqual(len(checks.tables_per_index(h)), 1)

    def test_epochs_monotonic(self):
        h = History()
        h.samples = [cluster(1, "a", 5, {"partition-0": ("a", (), 3)}),
                     cluster(2, "a", 6, {"partition-0": ("a", (), 4)})]
        self.assertEqual(checks.epochs_monotonic(h), [])
        # a restart (new incarnation) may start lower; the same process may not
        h.samples.append(cluster(3, "a", 2, {"partition-0": ("a", (), 1)}, inc=2))
        self.assertEqual(checks.epochs_monotonic(h), [])
        h.samples.append(cluster(4, "a", 7, {"partition-0": ("a", (), 3)}))
        kinds = {k for k, _ in checks.epochs_monotonic(h)}
        self.assertEqual(kinds, {"epoch-backwards"})

    def test_live_marked_down(self):
        h = History()
        h.disturbed = [["b", 10.0, 12.0, "paused"]]
        h.samples = [cluster(11, "a", 5, {}, {"a": "active", "b": "down"}),
                     cluster(20, "a", 6, {}, {"a": "active", "b": "down"})]
        self.assertEqual(checks.live_marked_down(h), [])   # within the grace after the pause
        h.samples.append(cluster(30, "a", 7, {}, {"a": "active", "b": "down"}))
        self.assertEqual(len(checks.live_marked_down(h)), 1)
        h.samples.append(cluster(31, "b", 7, {}, {"a": "down", "b": "active"}, slot=2))
        self.assertEqual(len(checks.live_marked_down(h)), 2)

    def test_unresponsive(self):
        h = History()
        h.samples = [{"t": float(t), "node": "a", "slot": 1, "inc": 1, "kind": "noanswer"} for t in range(10, 14)]
        self.assertEqual(checks.unresponsive(h, []), [])
        h.samples += [{"t": float(t), "node": "a", "slot": 1, "inc": 1, "kind": "noanswer"} for t in range(14, 18)]
        self.assertEqual(len(checks.unresponsive(h, [])), 1)

    def test_unbalanced(self):
        def table(rows):
            return {"cluster": {"partition_map": {"partitions": {
                "partition-%d" % i: {"primary_node": r[0], "replica_nodes": r[1:]} for i, r in enumerate(rows)}}}}
        good = table([["a", "b"], ["b", "c"], ["c", "a"]])
        self.assertIsNone(unbalanced(good, {"a", "b", "c"}, 2))
        self.assertIn("not a member", unbalanced(good, {"a", "b"}, 2))
        self.assertIn("distinct", unbalanced(table([["a", "a"], ["b", "c"], ["c", "a"]]), {"a", "b", "c"}, 2))
        skew = table([["a", "b"], ["a", "b"], ["a", "b"], ["a", "c"]])
        self.assertIn("unbalanced", unbalanced(skew, {"a", "b", "c"}, 2))


def ka(session, kind, invoke, complete, status, ttl=2.0, ended=False, client=1, node="a"):
    return {"client": client, "session": session, "ttl": ttl, "kind": kind, "node": node, "slot": 1,
            "invoke": invoke, "complete": complete, "status": status, "ended": ended}


def grant(token, session, invoke, complete, client=1, ttl=2.0):
    return {"client": client, "session": session, "ttl": ttl, "token": token, "key": "k%d" % token,
            "node": "a", "invoke": invoke, "complete": complete}


def use(t, token, accepted, newest, client=1):
    return {"t": t, "client": client, "session": 0, "token": token, "what": "first",
            "accepted": accepted, "newest": newest}


class CoordChecks(unittest.TestCase):
    def kinds(self, v):
        return sorted({k for k, _ in v})

    def test_lease_expiry_after_ttl(self):
        h = History()
        h.keepalives = [ka(5, "create", 0.0, 0.1, 200), ka(5, "renew", 0.5, 0.6, 200),
                        ka(5, "renew", 1.0, None, "error"),
                        ka(5, "renew", 2.6, 2.7, 404, ended=True)]
        self.assertEqual(checks.lease_safety(h), [])

    def test_premature_expiry(self):
        h = History()
        # The success invoked at 1.0 (ttl 2) protects the session until 3.0.
        h.keepalives = [ka(5, "create", 0.0, 0.1, 200), ka(5, "renew", 1.0, 1.1, 200),
                        ka(5, "renew", 2.5, 2.6, 404, ended=True)]
        self.assertEqual(self.kinds(checks.lease_safety(h)), ["premature-expiry"])

    def test_resurrected_session(self):
        h = History()
        h.keepalives = [ka(5, "create", 0.0, 0.1, 200), ka(5, "renew", 2.5, 2.6, 404, ended=True),
                        ka(5, "renew", 3.0, 3.1, 200)]
        self.assertEqual(self.kinds(checks.lease_safety(h)), ["session-resurrected"])

    def test_locks_good(self):
        h = History()
        # Client 1 holds 10 and releases; client 2 gets 14; client 1 pauses
        # with 20, its session ends (last keep-alive at 3.0, ttl 2), client 2
        # gets 25 at 5.5; the paused client is refused.
        h.keepalives = [ka(1, "create", 0.0, 0.1, 200), ka(1, "renew", 3.0, 3.1, 200),
                        ka(2, "create", 0.0, 0.1, 200, client=2), ka(2, "renew", 5.0, 5.1, 200, client=2)]
        h.grants = [grant(10, 1, 0.2, 0.3), grant(14, 2, 0.25, 1.0, client=2), grant(20, 1, 1.5, 2.0),
                    grant(25, 2, 2.5, 5.5, client=2)]
        h.lockops = [{"client": 1, "session": 1, "kind": "release", "node": "a", "slot": 1,
                      "invoke": 0.6, "complete": 0.7, "status": 200},
                     {"client": 2, "session": 2, "kind": "release", "node": "a", "slot": 1,
                      "invoke": 1.2, "complete": 1.3, "status": 200}]
        h.uses = [use(0.4, 10, True, 0), use(1.1, 14, True, 10, client=2), use(2.1, 20, True, 14),
                  use(5.6, 25, True, 20, client=2), use(6.0, 20, False, 25)]
        self.assertEqual(checks.lock_safety(h), [])

    def test_lock_token_dup_and_order(self):
        h = History()
        h.grants = [grant(10, 1, 0.0, 0.1), grant(10, 2, 0.5, 0.6, client=2), grant(8, 3, 1.0, 1.1, client=3)]
        self.assertEqual(self.kinds(checks.lock_safety(h)), ["lock-token-dup", "lock-token-order"])

    def test_lagging_grant_is_not_out_of_order(self):
        # A smaller token answered after a bigger one, but the requests
        # overlapped: no real-time order between them.
        h = History()
        h.grants = [grant(12, 2, 0.5, 0.9, client=2), grant(11, 1, 0.0, 1.5)]
        h.keepalives = [ka(1, "create", -5.0, -4.9, 200)]
        self.assertEqual(checks.lock_safety(h), [])

    def test_lock_overlap(self):
        h = History()
        # Client 1 holds 10, renewed at 1.0 (ttl 2): client 2's grant at 2.0 overlaps.
        h.keepalives = [ka(1, "create", 0.0, 0.1, 200), ka(1, "renew", 1.0, 1.1, 200)]
        h.grants = [grant(10, 1, 0.2, 0.3), grant(14, 2, 0.5, 2.0, client=2)]
        self.assertEqual(self.kinds(checks.lock_safety(h)), ["lock-overlap"])
        # ... unless client 1 had asked to release (even without an answer).
        h.lockops = [{"client": 1, "session": 1, "kind": "release", "node": "a", "slot": 1,
                      "invoke": 1.5, "complete": None, "status": "error"}]
        self.assertEqual(checks.lock_safety(h), [])

    def test_fence(self):
        h = History()
        h.grants = [grant(10, 1, 0.0, 0.1), grant(14, 2, 0.5, 0.6, client=2)]
        h.uses = [use(0.7, 14, True, 0, client=2), use(0.8, 10, True, 14)]
        self.assertEqual(self.kinds(checks.lock_safety(h)), ["fence-order"])
        h.uses = [use(0.2, 10, False, 14)]
        self.assertEqual(self.kinds(checks.lock_safety(h)), ["fence-refused-holder"])


if __name__ == "__main__":
    unittest.main()
