"""Unit tests of the linearizability checker on small hand-made histories,
linearizable and not, so that it is shown able to fail.

Run: python3 -m unittest tests/faults/test_linearizability.py (or pytest).
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from linearizability import check_key, check_history, op  # noqa: E402


def W(v, a, b):
    return op("w", v, a, b)


def R(v, a, b):
    return op("r", v, a, b)


def CAS(exp, v, a, b):
    """A compare-and-set exp -> v that succeeded (b None: outcome unknown)."""
    return op("cas", v, a, b, expected=exp)


def FAIL(exp, v, a, b):
    """A compare-and-set exp -> v refused with 409."""
    return op("casfail", v, a, b, expected=exp)


class Linearizable(unittest.TestCase):
    def ok(self, ops):
        r = check_key(ops)
        self.assertTrue(r.ok and not r.unknown, r)

    def test_empty(self):
        self.ok([])

    def test_sequential(self):
        self.ok([R(None, 0, 1), W("a", 2, 3), R("a", 4, 5), W("b", 6, 7), R("b", 8, 9)])

    def test_concurrent_write_either_value(self):
        # A read overlapping a write may see the old or the new value.
        self.ok([W("a", 0, 1), W("b", 2, 6), R("a", 3, 4), R("b", 5, 7)])
        self.ok([W("a", 0, 1), W("b", 2, 6), R("b", 3, 4), R("b", 5, 7)])

    def test_concurrent_writes_any_order(self):
        self.ok([W("a", 0, 5), W("b", 1, 4), R("a", 6, 7)])
        self.ok([W("a", 0, 5), W("b", 1, 4), R("b", 6, 7)])

    def test_unknown_write_may_take_effect_late(self):
        # A write that timed out (complete None) may show up any time later,
        # even after a later write completed.
        self.ok([W("a", 0, None), W("b", 2, 3), R("b", 4, 5), R("a", 6, 7), R("a", 8, 9)])

    def test_unknown_write_may_never_take_effect(self):
        self.ok([W("a", 0, 1), W("b", 2, None), R("a", 3, 4), R("a", 10, 11)])

    def test_unanswered_read_is_ignored(self):
        self.ok([W("a", 0, 1), R("zzz", 2, None), R("a", 3, 4)])

    def test_many_clients_random_sequential_spec(self):
        # Histories produced by a real register with random overlaps are
        # always linearizable.
        rnd = random.Random(7)
        for _ in range(30):
            ops, state, t = [], None, 0.0
            for i in range(40):
                # each op takes effect at t; its interval stretches around it
                t += rnd.random()
                a, b = t - rnd.random() * 2, t + rnd.random() * 2
                if rnd.random() < 0.5:
                    state = "v%d" % i
                    ops.append(W(state, a, None if rnd.random() < 0.2 else b))
                else:
                    ops.append(R(state, a, b))
            self.ok(ops)


class CasLinearizable(unittest.TestCase):
    def ok(self, ops):
        r = check_key(ops)
        self.assertTrue(r.ok and not r.unknown, r)

    def test_sequential_chain(self):
        self.ok([CAS(None, "a", 0, 1), R("a", 2, 3), CAS("a", "b", 4, 5), FAIL("a", "c", 6, 7),
                 R("b", 8, 9)])

    def test_refused_on_absent(self):
        self.ok([FAIL("a", "x", 0, 1), CAS(None, "a", 2, 3), FAIL(None, "y", 4, 5)])

    def test_concurrent_cas_one_wins(self):
        # Two clients read "a" and race: one succeeds, the other is refused.
        self.ok([CAS(None, "a", 0, 1), CAS("a", "b", 2, 6), FAIL("a", "c", 3, 5), R("b", 7, 8)])

    def test_refusal_before_a_concurrent_success(self):
        # A refusal may also be ordered after a concurrent success.
        self.ok([CAS(None, "a", 0, 1), FAIL("a", "c", 2, 4), CAS("a", "b", 3, 6), R("b", 7, 8)])

    def test_unknown_cas_explains_a_refusal(self):
        # A timed-out a -> b took effect unseen: the later refusal of a -> c
        # holds only if it did.
        self.ok([CAS(None, "a", 0, 1), CAS("a", "b", 2, None), FAIL("a", "c", 5, 6)])

    def test_unknown_cas_observed_later(self):
        self.ok([CAS(None, "a", 0, 1), CAS("a", "b", 2, None), R("a", 3, 4), R("b", 10, 11),
                 CAS("b", "c", 12, 13)])

    def test_unknown_cas_never_took_effect(self):
        self.ok([CAS(None, "a", 0, 1), CAS("a", "b", 2, None), CAS("a", "c", 5, 6), R("c", 7, 8)])

    def test_mixed_with_writes(self):
        self.ok([W("a", 0, 1), CAS("a", "b", 2, 3), W("c", 4, 5), FAIL("b", "d", 6, 7), R("c", 8, 9)])

    def test_random_sequential_spec(self):
        # A real register with CAS, random overlaps and unknown outcomes
        # (taken or not) is always linearizable.
        rnd = random.Random(5)
        for _ in range(30):
            ops, state, t, n = [], None, 0.0, 0
            for i in range(50):
                t += rnd.random()
                a, b = t - rnd.random() * 2, t + rnd.random() * 2
                x = rnd.random()
                if x < 0.4:
                    ops.append(R(state, a, b))
                    continue
                exp = state if rnd.random() < 0.7 else "v%d" % rnd.randrange(max(1, n))
                new = "v%d" % n
                n += 1
                if exp == state:
                    state = new
                    ops.append(CAS(exp, new, a, None if rnd.random() < 0.15 else b))
                elif rnd.random() < 0.15:
                    ops.append(CAS(exp, new, a, None))    # timed out, did nothing
                else:
                    ops.append(FAIL(exp, new, a, b))
            self.ok(ops)


class CasNotLinearizable(unittest.TestCase):
    def bad(self, ops, word=None):
        r = check_key(ops, key="k")
        self.assertFalse(r.ok, r)
        self.assertFalse(r.unknown, r)
        if word:
            self.assertIn(word, r.reason)
        return r

    def test_two_successes_from_one_value(self):
        # Both a -> b and a -> c succeeded: one of them compared against the
        # other's result, which is not "a".
        self.bad([CAS(None, "a", 0, 1), CAS("a", "b", 2, 5), CAS("a", "c", 3, 6)])

    def test_refused_although_it_held(self):
        self.bad([CAS(None, "a", 0, 1), R("a", 2, 3), FAIL("a", "b", 4, 5), R("a", 6, 7)])

    def test_refused_on_absent_key(self):
        self.bad([FAIL(None, "a", 0, 1), R(None, 2, 3)])

    def test_success_against_a_value_overwritten(self):
        self.bad([CAS(None, "a", 0, 1), CAS("a", "b", 2, 3), CAS("a", "c", 4, 5)])

    def test_refused_but_took_effect(self):
        # A 409 whose value shows up: the refused write did happen.
        self.bad([CAS(None, "a", 0, 1), FAIL("a", "b", 2, 3), R("b", 4, 5)], "answered 409")

    def test_success_expecting_unwritten_value(self):
        self.bad([CAS(None, "a", 0, 1), CAS("zz", "b", 2, 3)], "no write wrote")

    def test_stale_read_after_cas(self):
        self.bad([CAS(None, "a", 0, 1), CAS("a", "b", 2, 3), R("a", 4, 5)], "stale read")

    def test_unknown_cas_cannot_act_twice(self):
        # An unknown a -> b may explain one change, not a return to b after c.
        self.bad([CAS(None, "a", 0, 1), CAS("a", "b", 2, None), R("b", 3, 4), CAS("b", "c", 5, 6),
                  R("b", 7, 8)])

    def test_unknown_cas_needs_its_expected_value(self):
        # The unknown x -> b can never have taken effect (x never held), so b
        # cannot be read.
        self.bad([CAS(None, "a", 0, 1), W("x", 10, 11), CAS("x", "b", 2, None), R("b", 3, 4)])


class NotLinearizable(unittest.TestCase):
    def bad(self, ops, word=None):
        r = check_key(ops, key="k")
        self.assertFalse(r.ok, r)
        self.assertFalse(r.unknown, r)
        if word:
            self.assertIn(word, r.reason)
        return r

    def test_stale_read(self):
        self.bad([W("a", 0, 1), W("b", 2, 3), R("a", 4, 5)], "stale read")

    def test_lost_acknowledged_write(self):
        self.bad([W("a", 0, 1), R(None, 2, 3)], "found no value")

    def test_read_of_unwritten_value(self):
        self.bad([W("a", 0, 1), R("x", 2, 3)], "no write wrote")

    def test_values_flip_back(self):
        # Two reads after both writes completed disagree in a way no order explains.
        self.bad([W("a", 0, 10), W("b", 0, 10), R("a", 11, 12), R("b", 13, 14), R("a", 15, 16)])

    def test_read_order_inversion(self):
        # r1 sees the new value, a later r2 (started after r1 ended) the old.
        self.bad([W("a", 0, 1), W("b", 2, 20), R("b", 3, 4), R("a", 5, 6)])

    def test_unknown_write_cannot_take_effect_before_its_call(self):
        self.bad([R("a", 0, 1), W("a", 2, None)])

    def test_unknown_write_is_one_write(self):
        # An unknown write takes effect at most once: a, b, a again is impossible.
        self.bad([W("a", 0, None), W("b", 2, 3), R("a", 4, 5), R("b", 6, 7), R("a", 8, 9)])

    def test_compositional_per_key(self):
        res = check_history({"x": [W("1", 0, 1), R("1", 2, 3)],
                             "y": [W("1", 0, 1), W("2", 2, 3), R("1", 4, 5)]})
        self.assertEqual([r.ok for r in res], [True, False])

    def test_buried_violation_in_long_history(self):
        rnd = random.Random(11)
        ops, state, t = [], None, 0.0
        for i in range(60):
            t += 1
            state = "v%d" % i
            ops.append(W(state, t - 0.3, t + 0.3))
            ops.append(R(state, t + 0.4, t + 0.6 + rnd.random() * 0.3))
        # one read in the middle returns a value two writes old
        t += 1
        ops.append(R("v57", t, t + 0.1))
        self.bad(ops)


if __name__ == "__main__":
    unittest.main()
