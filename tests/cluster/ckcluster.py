"""Multi-node helpers on top of ckharness: start an N-node cluster the Go
library's way (node 1 bootstraps, the others join through JOIN_ADDR), read
each node's view with short HTTP timeouts, and wait for agreement (same
leader, same state index, the expected members) with polls bounded in count
and in time.

Nothing here asserts timings: a bound is only where a wait gives up.
"""

import json
import time
import urllib.parse

from ckharness import HarnessError, http_request

# Bounds for giving up (not expectations).
CONVERGE_TIMEOUT = 30.0
POLL = 0.05
PROBE_TIMEOUT = 1.0   # one HTTP probe; a stopped (SIGSTOP) node must not stall a poll

# Fast failure detection for tests; these are the runtime's defaults, spelled
# out so that the tests do not depend on a default changing.
FAST_ENV = {
    "HEARTBEAT_INTERVAL": "0.2",
    "SUSPECT_AFTER": "0.75",
    "DOWN_AFTER": "1.5",
    # A down node keeps its replica slots for this long (default 30 s); the
    # tests want the table re-homed quickly.
    "REBALANCE_DELAY": "1",
    "CK_LOG_LEVEL": "debug",
}


# ---------------------------------------------------------------------------
# Polling
# ---------------------------------------------------------------------------

class WaitTimeout(AssertionError):
    pass


def wait_for(pred, timeout=CONVERGE_TIMEOUT, poll=POLL, what="condition"):
    """Calls pred() until it returns something truthy, at most `timeout`
    seconds and int(timeout/poll)+1 times; returns that value or raises
    WaitTimeout naming `what` and the last value seen. pred may raise
    OSError/ValueError (a node not answering yet): that counts as falsy."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / poll) + 1):
        try:
            v = pred()
        except (OSError, ValueError) as e:
            v, last = None, e
        else:
            if v:
                return v
            last = v
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    raise WaitTimeout("gave up after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


def probe(node, path, timeout=PROBE_TIMEOUT):
    """GET path on node; the decoded JSON body for a 200, else None (also
    when the node does not answer)."""
    if not node.running():
        return None
    try:
        r = http_request("GET", node.url + path, timeout=timeout)
    except OSError:
        return None
    if r.status != 200:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def node_statuses(node, timeout=PROBE_TIMEOUT):
    """{id: status} from node's /nodes, or None."""
    j = probe(node, "/nodes?limit=10000", timeout)
    if j is None:
        return None
    return {n["id"]: n["status"] for n in j["nodes"]}


def leader_of(node, timeout=PROBE_TIMEOUT):
    """The leader id node reports (/consensus/leader), or None."""
    j = probe(node, "/consensus/leader", timeout)
    if not j or not j.get("leader_id"):
        return None
    return j["leader_id"]


def key_routes(node, keys):
    """(state index, {key: owners, primary first}) from node's
    /partitions/key answers, all at one state index; None when the node does
    not answer or its table moved while it was asked."""
    before = probe(node, "/cluster")
    if not before:
        return None
    routes = {}
    for k in keys:
        j = probe(node, "/partitions/key?key=" + urllib.parse.quote(k))
        if not j:
            return None
        routes[k] = [j["primary"]] + j["replicas"]
    after = probe(node, "/cluster")
    if not after or after["state_index"] != before["state_index"]:
        return None
    return before["state_index"], routes


def partitions_of(node):
    """The partitions list from node's /partitions, or None."""
    j = probe(node, "/partitions")
    return j["partitions"] if j else None


# ---------------------------------------------------------------------------
# A cluster
# ---------------------------------------------------------------------------

class Cluster:
    """N ckrun nodes made by a CkFactory (so the `ck` fixture cleans them up).

    Node ids are <prefix>1..<prefix>N; node 1 bootstraps, the others join
    through node 1's HTTP address (or `join` given to add()).
    """

    def __init__(self, ck, prefix="n", env=None, args=()):
        self.ck = ck
        self.prefix = prefix
        self.env = dict(FAST_ENV)
        self.env.update(env or {})
        self.args = list(args)
        self.nodes = []
        self.seq = 0

    # -- making nodes ------------------------------------------------------

    def add(self, join=None, env=None, start=True, wait=True, name=None, args=None):
        """Makes one node (the first one bootstraps) and, by default, starts
        it and waits for /ready. join: the node (or host:port) to join
        through; default the first node."""
        self.seq += 1
        name = name or "%s%d" % (self.prefix, self.seq)
        e = dict(self.env)
        if not self.nodes:
            e["BOOTSTRAP"] = "true"
        else:
            target = join or self.nodes[0]
            e["JOIN_ADDR"] = target if isinstance(target, str) else target.http_addr
        e.update(env or {})
        n = self.ck.node(name, args=self.args if args is None else args, env=e, start=False)
        self.nodes.append(n)
        if start:
            n.start(wait=wait)
        return n

    def start(self, count, simultaneous=False, join=None, env=None):
        """Adds `count` nodes. Normally one after the other, each ready
        before the next; with simultaneous=True every process is spawned at
        once and only then are they all waited for."""
        made = []
        for _ in range(count):
            made.append(self.add(join=join, env=env, start=not simultaneous))
        if simultaneous:
            for n in made:
                n.spawn()
            for n in made:
                n.wait_ready()
        return made

    # -- views -------------------------------------------------------------

    def live(self):
        return [n for n in self.nodes if n.running()]

    def by_id(self, node_id):
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def stats(self, nodes=None):
        """{name: /consensus/stats JSON or None} for the given (default
        live) nodes."""
        return {n.name: probe(n, "/consensus/stats") for n in (nodes or self.live())}

    def leader(self, nodes=None, timeout=CONVERGE_TIMEOUT):
        """The CkNode that every given live node agrees leads (waits)."""
        lid = self.wait_converged(nodes=nodes, timeout=timeout)["leader"]
        return self.by_id(lid)

    def followers(self, nodes=None):
        lead = self.leader(nodes)
        return [n for n in (nodes or self.live()) if n is not lead]

    def agreement(self, nodes=None, members=None, statuses=("active",)):
        """One look: a dict {leader, state_index, term} when every given
        node (default: the live ones) reports the same leader, one of them, and the
        same state index, and (when `members` is given) /nodes on each lists
        exactly those ids with a status in `statuses`; else None."""
        nodes = nodes or self.live()
        seen = set()
        for n in nodes:
            s = probe(n, "/consensus/stats")
            if not s or not s.get("leader_id"):
                return None
            seen.add((s["leader_id"], s["state_index"]))
            if len(seen) > 1:
                return None
        if members is not None:
            want = set(members)
            for n in nodes:
                st = node_statuses(n)
                if st is None or set(st) != want:
                    return None
                if any(st[i] not in statuses for i in want):
                    return None
        # Right after a crash the survivors still name the dead leader: only
        # a leader among the polled nodes counts.
        (lid, idx), = seen
        if lid not in {n.node_id for n in nodes}:
            return None
        # Stats can race with a commit between probes: confirm the first
        # node still answers with the same index.
        again = probe(nodes[0], "/consensus/stats")
        if not again or again["state_index"] != idx or again["leader_id"] != lid:
            return None
        return {"leader": lid, "state_index": idx, "term": again["term"]}

    def wait_converged(self, nodes=None, members=None, statuses=("active",),
                       timeout=CONVERGE_TIMEOUT, what=None):
        """Waits until agreement(...) holds; returns it. members=True means
        the ids of the given nodes."""
        nodes = list(nodes or self.live())
        if members is True:
            members = [n.node_id for n in nodes]
        try:
            return wait_for(lambda: self.agreement(nodes, members, statuses), timeout=timeout,
                            what=what or "agreement of %s" % [n.name for n in nodes])
        except WaitTimeout as e:
            detail = {n.name: (probe(n, "/consensus/stats"), node_statuses(n)) for n in nodes}
            raise WaitTimeout("%s\nviews: %s" % (e, json.dumps(detail, default=str)[:4000]))

    def wait_status(self, observer, node_id, status, timeout=CONVERGE_TIMEOUT):
        """Waits until observer's /nodes shows node_id with `status`
        (status None: node_id absent)."""
        def check():
            st = node_statuses(observer)
            if st is None:
                return False
            return (node_id not in st) if status is None else st.get(node_id) == status
        return wait_for(check, timeout=timeout,
                        what="%s to see %s as %s" % (observer.name, node_id, status or "absent"))

    def voter_ids(self, nodes=None):
        """Ids of the given (default live) nodes whose own stats say they
        are voters."""
        out = set()
        for n in nodes or self.live():
            s = probe(n, "/consensus/stats")
            if s and s.get("role") == "voter":
                out.add(n.node_id)
        return out

    def describe(self):
        """A short text with every live node's view (for assertion messages)."""
        out = []
        for n in self.live():
            out.append("%s: stats=%s nodes=%s" % (n.name, probe(n, "/consensus/stats"), node_statuses(n)))
        return "\n".join(out)


__all__ = ["Cluster", "wait_for", "probe", "node_statuses", "leader_of", "partitions_of",
           "WaitTimeout", "HarnessError", "FAST_ENV"]
