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
    if not bad:
        return []
    kinds = collections.Counter(("PUT" if o["kind"] == "w" else "GET") for o in bad)
    return [("unauthorized", "%d of %d KV requests that carried the cluster token were answered 401 (%s), e.g. %s via %s: %s" % (
        len(bad), len(h.ops), dict(kinds), bad[0]["key"], bad[0]["node"], (bad[0].get("error") or "")[:100]))]


def linearizable(h, budget=2000000):
    by_key = collections.defaultdict(list)
    for o in h.ops:
        by_key[o["key"]].append(op(o["kind"], o["value"], o["invoke"], o["complete"],
                                   meta="via %s@%s client %d status %s" % (o["node"], o.get("slot"), o["client"], o["status"])))
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
    return v
