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


if __name__ == "__main__":
    unittest.main()
