"""A linearizability checker for a history of register operations per key
(Wing & Gong's search with Lowe's memoisation, as in Porcupine).

An operation is Op(kind, value, invoke, complete, meta, expected):

* kind "w": a write of `value`; kind "r": a read that returned `value`
  (None = the key was absent; the register starts absent);
* kind "cas": a compare-and-set that succeeded: the register held
  `expected` (None = absent) and now holds `value`; kind "casfail": one that
  was refused (409): the register did not hold `expected`, nothing changed;
* complete is None for an operation whose outcome is unknown (an error or a
  timeout): a write or a compare-and-set then may take effect at any point
  after its invocation, or never (its completion is +infinity; a
  compare-and-set can only take effect where the register holds `expected`);
  a read without an answer tells nothing and is dropped. A "casfail" always
  has an answer (409).

Keys are independent (linearizability is compositional), so each key is
checked on its own. Write values are expected to be unique per key (the
clients make them so); a read of a value that no write wrote is a violation.

Two safe reductions keep the search small: unanswered reads are dropped, and
so are unanswered writes (and compare-and-sets) whose value nothing observed
(no read returned it, no compare-and-set expected it), when the key has no
refused compare-and-set: such a write can be left out, as if it never took
effect, without changing what any operation saw. A refused compare-and-set
may be explained by such a write having taken effect (the value changed under
it), so with one on the key they are all kept. The search itself
is bounded by a step budget; running out of it is reported as "unknown",
never as a pass or a violation.
"""

import collections

INF = float("inf")

Op = collections.namedtuple("Op", "kind value invoke complete meta expected")

WRITES = ("w", "cas")          # kinds that may set the register


def op(kind, value, invoke, complete, meta=None, expected=None):
    if kind == "casfail" and complete is None:
        raise ValueError("a refused compare-and-set has an answer (complete)")
    return Op(kind, value, invoke, complete, meta, expected)


class Result:
    def __init__(self, ok, key=None, reason="", ops=0, unknown=False, detail=None):
        self.ok = ok
        self.key = key
        self.reason = reason
        self.ops = ops
        self.unknown = unknown
        self.detail = detail or []

    def __repr__(self):
        return "<Result ok=%s unknown=%s key=%r %s>" % (self.ok, self.unknown, self.key, self.reason)


def _reduce(ops):
    reads = [o for o in ops if o.kind == "r" and o.complete is not None]
    fails = [o for o in ops if o.kind == "casfail"]
    writes = [o for o in ops if o.kind in WRITES]
    if fails:
        return writes + reads + fails
    # Values something must have seen: read, or expected by a compare-and-set
    # that succeeded or that is kept (a fixed point: an unknown one that is
    # kept makes the value it expects observed too).
    seen = {o.value for o in reads}
    seen |= {o.expected for o in writes if o.kind == "cas" and o.complete is not None}
    keep = [o for o in writes if o.complete is not None]
    pending = [o for o in writes if o.complete is None]
    for _ in range(len(pending) + 1):
        more = [o for o in pending if o.value in seen]
        if not more:
            break
        keep += more
        pending = [o for o in pending if o.value not in seen]
        seen |= {o.expected for o in more if o.kind == "cas"}
    return keep + reads


def _describe(o):
    c = "inf" if o.complete is None else "%.3f" % o.complete
    if o.kind == "w":
        what = "write %r" % (o.value,)
    elif o.kind == "r":
        what = "read -> %r" % (o.value,)
    else:
        what = "cas %r -> %r %s" % (o.expected, o.value, "refused" if o.kind == "casfail" else
                                    "succeeded" if o.complete is not None else "(outcome unknown)")
    m = (" %s" % (o.meta,)) if o.meta else ""
    return "%s [%.3f, %s]%s" % (what, o.invoke, c, m)


def stale_read(ops):
    """A quick, sound witness of a violation, for a readable message: a
    read that returned the value of write A although another write B began
    after A completed and completed before the read began (or a read of a
    value nobody wrote, or an absent key after a completed write)."""
    writers = {}
    for o in ops:
        if o.kind in WRITES:
            writers[o.value] = o
    done = sorted((o for o in ops if o.kind in WRITES and o.complete is not None), key=lambda o: o.complete)
    for r in ops:
        if r.kind != "r" or r.complete is None:
            continue
        if r.value is not None and r.value not in writers:
            return r, None, None
        a = writers.get(r.value)
        if a is not None and a.complete is None:
            continue
        for b in done:
            if b.complete >= r.invoke:
                break
            if b is a:
                continue
            if a is None or b.invoke > a.complete:
                return r, a, b
    return None


def check_key(ops, budget=2000000, key=None):
    """Checks one key's operations. Returns a Result."""
    ops = _reduce(ops)
    n = len(ops)
    if n == 0:
        return Result(True, key, ops=0)
    writers = {o.value for o in ops if o.kind in WRITES}
    refused = {o.value: o for o in ops if o.kind == "casfail"}
    for o in ops:
        seen = o.value if o.kind == "r" else o.expected if o.kind == "cas" and o.complete is not None else None
        if seen is not None and seen not in writers:
            how = "read %r" % (seen,) if o.kind == "r" else "a compare-and-set succeeded expecting %r" % (seen,)
            if seen in refused:
                return Result(False, key, "%s, a value written only by a compare-and-set answered 409 "
                              "(refused), so it did take effect: %s; %s" % (
                                  how, _describe(o), _describe(refused[seen])),
                              ops=n, detail=[_describe(o), _describe(refused[seen])])
            return Result(False, key, "%s, a value that no write wrote: %s" % (how, _describe(o)),
                          ops=n, detail=[_describe(o)])
    ops = sorted(ops, key=lambda o: o.invoke)
    inv = [o.invoke for o in ops]
    comp = [INF if o.complete is None else o.complete for o in ops]
    finite = 0
    for i in range(n):
        if comp[i] != INF:
            finite |= 1 << i
    # Memo of (linearized set, register state) already explored.
    seen = set()
    # DFS: each frame is (mask, state, candidates, next candidate index).
    best_mask, best_state = 0, None

    def candidates(mask):
        # The earliest completion among the ops not linearized yet bounds
        # which ops may go next: those invoked no later than it.
        m = INF
        for i in range(n):
            if not (mask >> i) & 1 and comp[i] < m:
                m = comp[i]
        out = []
        for i in range(n):
            if inv[i] > m:
                break
            if not (mask >> i) & 1:
                out.append(i)
        # Ops that complete first are tried first.
        out.sort(key=lambda i: comp[i])
        return out

    stack = [(0, None, candidates(0), 0)]
    steps = 0
    while stack:
        steps += 1
        if steps > budget:
            return Result(True, key, "search budget of %d steps exhausted" % budget, ops=n, unknown=True)
        mask, state, cands, k = stack[-1]
        if k >= len(cands):
            stack.pop()
            continue
        stack[-1] = (mask, state, cands, k + 1)
        i = cands[k]
        o = ops[i]
        if o.kind == "r":
            if o.value != state:
                continue
            nstate = state
        elif o.kind == "w":
            nstate = o.value
        elif o.kind == "cas":
            if o.expected != state:
                continue
            nstate = o.value
        else:  # casfail
            if o.expected == state:
                continue
            nstate = state
        nmask = mask | (1 << i)
        if nmask & finite == finite:
            return Result(True, key, ops=n)
        if (nmask, nstate) in seen:
            continue
        seen.add((nmask, nstate))
        if bin(nmask).count("1") > bin(best_mask).count("1"):
            best_mask, best_state = nmask, nstate
        stack.append((nmask, nstate, candidates(nmask), 0))
    # No linearization. Explain with the stale-read witness when there is
    # one, else with where the longest partial linearization got stuck.
    w = stale_read(ops)
    if w:
        r, a, b = w
        if a is None and r.value is None:
            reason = "read found no value after %s had completed: %s" % (_describe(b), _describe(r))
        elif a is None:
            reason = "read of a value nobody wrote: %s" % _describe(r)
        else:
            reason = "stale read: %s returned the value of %s, overwritten by %s" % (
                _describe(r), _describe(a), _describe(b))
        return Result(False, key, reason, ops=n, detail=[_describe(x) for x in (r, a, b) if x])
    stuck = [ops[i] for i in candidates(best_mask)]
    reason = "no linearization: %d of %d ops placed, register %r, next could be: %s" % (
        bin(best_mask).count("1"), n, best_state, "; ".join(_describe(o) for o in stuck[:4]))
    return Result(False, key, reason, ops=n, detail=[_describe(o) for o in stuck])


def check_history(by_key, budget=2000000):
    """{key: [Op]} -> list of Results (one per key)."""
    return [check_key(v, budget=budget, key=k) for k, v in sorted(by_key.items())]
