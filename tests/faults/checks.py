"""Checkers over a scenario's whole History. Each returns a list of
(kind, one-line description)."""

import collections
import re

from linearizability import check_history, op

# A log line that means a node crashed or asserted.
CRASH_RE = re.compile(r"AddressSanitizer|runtime error:|SIGSEGV|Segmentation fault|"
                      r"assert(ion)? failed|Assertion .* failed|\bassert\b|core dumped|PANIC", re.I)

UNRESPONSIVE = 5.0     # seconds without an answer from a running, unpaused node
DOWN_GRACE = 10.0      # a node disturbed until t may still be seen down until t + this


def two_leaders(h):
    by_term = collections.defaultdict(set)
    for s in h.samples:
        if s["kind"] == "stats" and s["state"] == "leader":
            # node@slot: a duplicate id is a different process.
            by_term[s["term"]].add("%s@%s" % (s["node"], s["slot"]))
    return [("two-leaders", "term %s had leaders %s" % (t, sorted(ns)))
            for t, ns in sorted(by_term.items(), key=lambda x: x[0] or 0) if len(ns) > 1]


def primaries_per_epoch(h):
    seen = collections.defaultdict(set)
    for s in h.samples:
        if s["kind"] == "cluster":
            for p, (prim, _, epoch) in s["parts"].items():
                seen[(p, epoch)].add(prim)
    out = []
    for (p, e), prims in sorted(seen.items(), key=lambda x: (x[0][0], x[0][1] or 0)):
        if len(prims) > 1:
            out.append(("two-primaries", "%s epoch %s had primaries %s" % (p, e, sorted(map(str, prims)))))
    return out


def tables_per_index(h):
    seen = collections.defaultdict(dict)
    for s in h.samples:
        if s["kind"] == "cluster":
            seen[s["state_index"]].setdefault(s["digest"], s["node"])
    return [("split-table", "state index %s: %d different tables (seen on %s)" % (
        i, len(d), sorted(d.values()))) for i, d in sorted(seen.items(), key=lambda x: x[0] or 0) if len(d) > 1]


def epochs_monotonic(h):
    """Per node incarnation: a partition's epoch and the state index never
    go backwards."""
    last = {}
    last_idx = {}
    out = []
    for s in sorted((s for s in h.samples if s["kind"] == "cluster"), key=lambda s: s["t"]):
        k = (s["node"], s["slot"], s["inc"])
        if k in last_idx and s["state_index"] < last_idx[k]:
            out.append(("index-backwards", "%s: state index %s after %s" % (s["node"], s["state_index"], last_idx[k])))
        last_idx[k] = max(s["state_index"], last_idx.get(k, s["state_index"]))
        for p, (_, _, e) in s["parts"].items():
            pk = k + (p,)
            if pk in last and e is not None and e < last[pk]:
                out.append(("epoch-backwards", "%s: %s epoch %s after %s" % (s["node"], p, e, last[pk])))
            if e is not None:
                last[pk] = max(e, last.get(pk, e))
    return out[:20]


def _excused(h, node, t):
    for nid, t0, t1, _ in h.disturbed:
        if nid == node and t0 <= t and (t1 is None or t <= t1 + DOWN_GRACE):
            return True
    return False


def live_marked_down(h):
    """A node that kept heartbeating (not paused, killed, cut off or
    starting around then) is never marked down."""
    out = {}
    for s in h.samples:
        if s["kind"] != "cluster":
            continue
        for nid, st in s["statuses"].items():
            if st == "down" and nid not in out and not _excused(h, nid, s["t"]):
                out[nid] = ("live-marked-down", "%s was marked down while it was not paused, killed or cut off (seen on %s at state index %s)" % (
                    nid, s["node"], s["state_index"]))
    return list(out.values())


def unresponsive(h, nodes):
    """A running, unpaused node answers the recorder: a run of 'noanswer'
    samples longer than UNRESPONSIVE is a violation (paused or dead nodes
    are not polled)."""
    out = []
    by = collections.defaultdict(list)
    for s in h.samples:
        if s["kind"] in ("noanswer", "stats"):
            by[(s["node"], s["slot"], s["inc"])].append(s)
    for k, ss in by.items():
        ss.sort(key=lambda s: s["t"])
        start = None
        for s in ss:
            if s["kind"] == "noanswer":
                start = s["t"] if start is None else start
                # A start (or restart) may take a while to open its port.
                if s["t"] - start > UNRESPONSIVE and not _recent(h, k[0], start, ("start", "resume")):
                    out.append(("unresponsive", "%s (incarnation %d) did not answer for %.1fs while running" % (
                        k[0], k[2], s["t"] - start)))
                    break
            else:
                start = None
    return out


def _recent(h, node, t, kinds, window=3.0):
    return any(e["node"] == node and e["kind"] in kinds and t - window <= e["t"] <= t for e in h.events)


def crashes(h, nodes):
    """Exits the harness did not cause, and crash lines in the logs."""
    out = []
    for n in nodes:
        for t, code, expected, inc in n.exits:
            if expected:
                continue
            if code < 0 or not n.may_exit:
                out.append(("crash", "%s (incarnation %d) exited with %s without being killed%s" % (
                    n.node_id, inc, ("signal %d" % -code) if code < 0 else "code %d" % code,
                    _last_error(n))))
        for line in n.log_text().splitlines():
            if CRASH_RE.search(line):
                out.append(("crash-log", "%s log: %s" % (n.node_id, line.strip()[:200])))
                break
    return out


def _last_error(n):
    lines = [x for x in n.log_text().splitlines() if x.strip()]
    for x in reversed(lines[-30:]):
        if re.search(r"error|fatal|panic|abort|signal", x, re.I):
            return "; last error line: " + x.strip()[:160]
    return "; last log line: " + lines[-1].strip()[:160] if lines else ""


def teardown_exits(stopped):
    out = []
    for n, code, killed in stopped:
        if killed:
            out.append(("stop-hung", "%s needed SIGKILL after SIGTERM" % n.node_id))
        elif code not in (0, None):
            out.append(("stop-exit", "%s exited with %s after SIGTERM" % (n.node_id, code)))
    return out


def unauthorized(h):
    """Every client request carries the cluster token: a 401 means a node
    dropped it on the way (e.g. when forwarding to the primary)."""
    bad = [o for o in h.ops if o["status"] == 401]
    out = []
    if bad:
        kinds = collections.Counter(({"w": "PUT", "r": "GET"}.get(o["kind"], o["kind"])) for o in bad)
        out.append(("unauthorized", "%d of %d KV requests that carried the cluster token were answered 401 (%s), e.g. %s via %s: %s" % (
            len(bad), len(h.ops), dict(kinds), bad[0]["key"], bad[0]["node"], (bad[0].get("error") or "")[:100])))
    coord = h.keepalives + h.lockops
    bad = [o for o in coord if o["status"] == 401]
    if bad:
        kinds = collections.Counter(o["kind"] for o in bad)
        out.append(("unauthorized", "%d of %d session and lock requests that carried the cluster token were answered 401 (%s), e.g. via %s: %s" % (
            len(bad), len(coord), dict(kinds), bad[0]["node"], (bad[0].get("error") or "")[:100])))
    return out


def _rel(h, t):
    return "%.3f" % (t - getattr(h, "t0", 0.0))


def lease_safety(h):
    """Per TTL session: a keep-alive that found it ended (404) completed at
    least one TTL after the invocation of the last successful keep-alive (or
    its creation) invoked before that completion: the leader counts the TTL
    from when it applied that renewal, which is after it was invoked, so an
    earlier end is a premature expiry. And nothing renews it after that."""
    by = collections.defaultdict(list)
    for k in h.keepalives:
        if k["session"] is not None:
            by[k["session"]].append(k)
    out = []
    for sid, recs in sorted(by.items()):
        ends = [k for k in recs if k.get("ended")]
        if not ends:
            continue
        first = min(ends, key=lambda k: k["complete"])
        c = first["complete"]
        ok = [k for k in recs if k["status"] == 200 and k["complete"] is not None and k["invoke"] < c]
        if ok:
            last = max(ok, key=lambda k: k["invoke"])
            if c < last["invoke"] + last["ttl"]:
                out.append(("premature-expiry", "session %d (ttl %gs, client %d): %s via %s invoked at %s "
                            "succeeded (answered %s), but a keep-alive via %s [%s, %s] found the session ended "
                            "%.3fs after that invocation" % (
                                sid, last["ttl"], last["client"], "created" if last["kind"] == "create" else
                                "a keep-alive", last["node"], _rel(h, last["invoke"]), _rel(h, last["complete"]),
                                first["node"], _rel(h, first["invoke"]), _rel(h, c), c - last["invoke"])))
        later = [k for k in recs if k["status"] == 200 and k["kind"] == "renew" and k["invoke"] > c]
        if later:
            k = later[0]
            out.append(("session-resurrected", "session %d: found ended via %s at %s, then a keep-alive via %s "
                        "invoked at %s succeeded" % (sid, first["node"], _rel(h, c), k["node"],
                                                    _rel(h, k["invoke"]))))
    return out[:20]


def lock_safety(h):
    """The lock grants and the fenced resource (workloads.py):

    * lock-token-dup: no two grants carry one token;
    * lock-token-order: a grant that completed before another was invoked
      has the smaller token (tokens strictly increase in real-time grant
      order);
    * lock-overlap: a grant (token t2, answered at c2) while an earlier
      holder (t1 < t2) still held the lock by its lease: it had not asked to
      release by c2, and a keep-alive of its session invoked at i succeeded
      with i + ttl > c2 (its session cannot have ended yet, see
      lease_safety), so its key was still there;
    * fence-order: the resource never accepted an older token after a newer
      one (it is built so; this checks the record);
    * fence-refused-holder: a refused use had a newer grant before it (no
      holder that still held the lock was refused).
    """
    out = []
    grants = h.grants
    seen = {}
    for g in grants:
        if g["token"] in seen:
            o = seen[g["token"]]
            out.append(("lock-token-dup", "token %d granted twice: to client %d (session %d) via %s at %s and "
                        "to client %d (session %d) via %s at %s" % (
                            g["token"], o["client"], o["session"], o["node"], _rel(h, o["complete"]),
                            g["client"], g["session"], g["node"], _rel(h, g["complete"]))))
        else:
            seen[g["token"]] = g
    by_complete = sorted(grants, key=lambda g: g["complete"])
    for g2 in grants:
        before = [g for g in by_complete if g["complete"] < g2["invoke"]]
        if before:
            g1 = max(before, key=lambda g: g["token"])
            if g1["token"] >= g2["token"]:
                out.append(("lock-token-order", "client %d got token %d via %s [%s, %s] after client %d had got "
                            "token %d via %s (answered %s)" % (
                                g2["client"], g2["token"], g2["node"], _rel(h, g2["invoke"]), _rel(h, g2["complete"]),
                                g1["client"], g1["token"], g1["node"], _rel(h, g1["complete"]))))
    # Per session: its successful keep-alives' invocations, its releases.
    renew = collections.defaultdict(list)
    for k in h.keepalives:
        if k["session"] is not None and k["status"] == 200:
            renew[k["session"]].append(k["invoke"])
    rel = collections.defaultdict(list)
    for o in h.lockops:
        if o["kind"] in ("release", "cleanup"):
            rel[o["session"]].append(o)
    for g2 in grants:
        c2 = g2["complete"]
        for g1 in grants:
            if g1["token"] >= g2["token"] or g1["session"] == g2["session"]:
                continue
            # A release of that session asked before c2 that may have acted
            # on g1's key (not one answered before g1 was even asked for).
            if any(o["invoke"] < c2 and (o["complete"] is None or o["complete"] > g1["invoke"])
                   for o in rel[g1["session"]]):
                continue
            alive = [i for i in renew[g1["session"]] if i < c2 < i + g1["ttl"]]
            if alive:
                out.append(("lock-overlap", "client %d got token %d via %s at %s while client %d (token %d via %s, "
                            "granted at %s, session %d) still held the lock: no release asked, and its session "
                            "had a keep-alive invoked at %s that succeeded (ttl %gs)" % (
                                g2["client"], g2["token"], g2["node"], _rel(h, c2), g1["client"], g1["token"],
                                g1["node"], _rel(h, g1["complete"]), g1["session"], _rel(h, max(alive)), g1["ttl"])))
                break
    newest = 0
    for u in h.uses:
        if u["accepted"]:
            if u["token"] < newest:
                out.append(("fence-order", "the resource accepted token %d after %d" % (u["token"], newest)))
            newest = max(newest, u["token"])
        else:
            newer = [g for g in grants if g["token"] > u["token"] and g["complete"] <= u["t"]]
            if not newer:
                out.append(("fence-refused-holder", "client %d's use with token %d (%s) at %s was refused, but no "
                            "grant of a newer token came before it" % (
                                u["client"], u["token"], u["what"], _rel(h, u["t"]))))
    return out[:20]


def linearizable(h, budget=2000000):
    by_key = collections.defaultdict(list)
    for o in h.ops:
        meta = "via %s@%s client %d status %s" % (o["node"], o.get("slot"), o["client"], o["status"])
        kind = o["kind"]
        if kind == "cas":
            meta += " (%s)" % ("?cas=%s" % o.get("mod") if o.get("variant") == "mod" else "txn")
            if o.get("refused"):
                kind = "casfail"
        by_key[o["key"]].append(op(kind, o["value"], o["invoke"], o["complete"], meta=meta,
                                   expected=o.get("expected")))
    out, notes = [], []
    for r in check_history(by_key, budget=budget):
        if r.unknown:
            notes.append("linearizability of %s unknown: %s" % (r.key, r.reason))
        elif not r.ok:
            out.append(("not-linearizable", "key %s (%d ops): %s" % (r.key, r.ops, r.reason)))
    return out, notes


def judge(harness, stopped):
    h = harness.h
    v = list(h.violations)
    v += two_leaders(h)
    v += primaries_per_epoch(h)
    v += tables_per_index(h)
    v += epochs_monotonic(h)
    v += live_marked_down(h)
    v += unresponsive(h, harness.nodes)
    v += crashes(h, harness.nodes)
    v += teardown_exits(stopped)
    if harness.kv:
        v += unauthorized(h)
        lv, notes = linearizable(h)
        v += lv
        h.notes += notes
    v += lease_safety(h)
    v += lock_safety(h)
    return v
