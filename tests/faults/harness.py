"""One scenario's world: the nodes (in the run's namespaces), the recorder
that polls every node, the KV clients, the fault log, and the convergence
wait after a heal.

Everything that happens is appended to a History (samples, events, KV ops,
disturbance intervals, violations found while running); checks.py judges it
afterwards.
"""

import json
import os
import random
import shutil
import threading
import time
import urllib.parse

from netns import sh
from nodes import AUTH, FaultNode, get_json, request, wait_for
from workloads import Coord

# Failure detection and raft timings (the runtime's defaults, spelled out so
# that a changed default does not change the suite), and a short rebalance
# delay so that a dead node's slots are re-homed within a round.
BASE_ENV = {
    "HEARTBEAT_INTERVAL": "0.2",
    "SUSPECT_AFTER": "0.75",
    "DOWN_AFTER": "1.5",
    "ELECTION_TIMEOUT": "0.3",
    "HEARTBEAT_TIMEOUT": "0.05",
    "REBALANCE_DELAY": "2",
    "PARTITION_COUNT": "16",
    "REPLICATION_FACTOR": "3",
    "CLUSTER_NAME": "faults",
    "CK_LOG_LEVEL": "info",
    "START_TIMEOUT": "30",
}

POLL = 0.1             # recorder: seconds between two polls of one node
PROBE_TIMEOUT = 1.0    # recorder: one HTTP probe
KV_TIMEOUT = 6.0       # one KV client request (the routing node retries up to 5 s)
CONVERGE_TIMEOUT = 30.0


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.samples = []      # dicts: t, node, inc, kind ('stats'|'cluster'|'noanswer'), ...
        self.events = []       # dicts: t, kind, node, ...
        self.ops = []          # dicts: client, key, kind, value, invoke, complete, status, node
        self.disturbed = []    # [node_id, t0, t1 or None, reason]
        self.violations = []   # (kind, text) found while running
        self.notes = []
        # The /v1 workloads (workloads.py): session creations and keep-alives,
        # lock requests and releases, lock grants, uses of the fenced resource.
        self.keepalives = []
        self.lockops = []
        self.grants = []
        self.uses = []
        self.t0 = time.monotonic()

    def add(self, lst, item):
        with self.lock:
            lst.append(item)


class Harness:
    def __init__(self, run, name, seed, nodes=3, env=None, kv=True, slots=None):
        self.run = run
        self.topo = run.topo
        self.ckrun = run.ckrun
        self.source_dir = run.source_dir
        self.kv = kv
        self.app_args = [os.path.join(run.source_dir, "examples", "kv", "app.lua")] if kv else []
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        self.dir = os.path.join(run.tmp, "%s-%d" % (name, seed))
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.env = dict(BASE_ENV)
        self.env.update(env or {})
        self.h = History()
        self.nodes = []
        self.initial = nodes
        self.stop_ev = threading.Event()
        self.clients_stop = threading.Event()
        self.threads = []
        self.pollers = {}
        self.t0 = time.monotonic()
        self.mounts = []
        self.rounds = 0
        self.free_slots = list(range(1, self.topo.slots + 1))
        self.rf = int(self.env["REPLICATION_FACTOR"])
        self.pcount = int(self.env["PARTITION_COUNT"])
        self.broken = False
        self.data_dir_for = {}   # slot -> data dir (e.g. on a tmpfs)
        self.coord = Coord(self, ())
        self.h.t0 = self.t0

    # -- log ---------------------------------------------------------------

    def now(self):
        return time.monotonic()

    def event(self, kind, node=None, **kw):
        e = {"t": self.now(), "kind": kind, "node": node}
        e.update(kw)
        self.h.add(self.h.events, e)
        if self.run.verbose:
            print("  [%7.2f] %s %s %s" % (e["t"] - self.t0, kind, node or "",
                                         " ".join("%s=%s" % kv for kv in kw.items())), flush=True)

    def violation(self, kind, text):
        self.h.add(self.h.violations, (kind, text))
        self.event("violation", None, what=kind, text=text[:300])

    def disturb(self, node_ids, reason):
        """Marks nodes as not heartbeating normally from now on (until
        undisturb); returns the records for undisturb()."""
        recs = []
        for nid in node_ids:
            rec = [nid, self.now(), None, reason]
            self.h.add(self.h.disturbed, rec)
            recs.append(rec)
        return recs

    def undisturb(self, recs):
        t = self.now()
        for rec in recs:
            if rec[2] is None:
                rec[2] = t

    # -- nodes -------------------------------------------------------------

    def node(self, node_id):
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        return None

    def add_node(self, node_id=None, join=True, env=None, start=True, data_dir=None):
        slot = self.free_slots.pop(0)
        node_id = node_id or "n%d" % slot
        e = dict(self.env)
        if join and self.nodes:
            e["JOIN_ADDR"] = self.nodes[0].http_addr
        else:
            e["BOOTSTRAP"] = "true"
        e.update(env or {})
        data_dir = data_dir or self.data_dir_for.get(slot) or os.path.join(self.dir, "%s-s%d-data" % (node_id, slot))
        n = FaultNode(self, node_id, slot, data_dir,
                      os.path.join(self.dir, "%s-s%d.log" % (node_id, slot)), e)
        self.nodes.append(n)
        if self.pollers is not None and not self.stop_ev.is_set() and self.threads:
            self._start_poller(n)
        if start:
            n.spawn()
        return n

    def members(self):
        """Nodes that should be in the cluster at the end."""
        return [n for n in self.nodes if not n.left]

    def live(self):
        return [n for n in self.members() if n.answering_expected()]

    def join_addrs(self, n):
        others = [m for m in self.members() if m is not n and m.running()]
        return others[0].http_addr if others else None

    def restart(self, n, wipe=False):
        """(Re)starts a stopped node with its data dir (or an empty one) and
        a JOIN_ADDR of a live member."""
        if n.running():
            return
        if wipe:
            shutil.rmtree(n.data_dir, ignore_errors=True)
        j = self.join_addrs(n)
        if j:
            n.env["JOIN_ADDR"] = j
            n.env.pop("BOOTSTRAP", None)
        n.spawn()

    def wait_ready(self, nodes, timeout=30.0):
        ok = wait_for(lambda: all(n.ready() for n in nodes), timeout, poll=0.1)
        return bool(ok)

    def start_cluster(self):
        first = self.add_node(join=False)
        if not self.wait_ready([first]):
            raise SetupError("%s never got ready:\n%s" % (first.node_id, first.log_tail()))
        rest = [self.add_node() for _ in range(self.initial - 1)]
        if not self.wait_ready(rest):
            raise SetupError("nodes never got ready:\n" + "\n".join(n.log_tail() for n in rest))
        ok, why = self.wait_converged(timeout=CONVERGE_TIMEOUT)
        if not ok:
            raise SetupError("the new cluster did not converge: %s" % why)

    def leader(self, timeout=10.0):
        """The node that every live member names as leader (bounded wait)."""
        def look():
            ids = set()
            for n in self.live():
                s = n.get("/consensus/stats")
                if not s or not s.get("leader_id"):
                    return None
                ids.add(s["leader_id"])
            if len(ids) != 1:
                return None
            n = self.node(ids.pop())
            return n if n is not None and n.answering_expected() else None
        return wait_for(look, timeout, poll=0.05)

    def any_leader(self, timeout=10.0):
        """A node that says it is the leader (no agreement needed)."""
        def look():
            for n in self.live():
                s = n.get("/consensus/stats", timeout=0.5)
                if s and s.get("state") == "leader":
                    return n
            return None
        return wait_for(look, timeout, poll=0.05)

    # -- convergence --------------------------------------------------------

    def view(self, n):
        s = n.get("/consensus/stats")
        c = n.get("/cluster")
        if not s or not c:
            return None
        return s, c

    def converged(self):
        """(True, info) when every member is up and agrees; else (False, why)."""
        members = self.members()
        for n in members:
            if not n.answering_expected():
                return False, "%s is not running" % n.node_id
        views = {}
        for n in members:
            v = self.view(n)
            if v is None:
                return False, "%s does not answer" % n.node_id
            views[n.node_id] = v
        leaders = {s.get("leader_id") for s, _ in views.values()}
        if len(leaders) != 1 or None in leaders:
            return False, "leaders named: %s" % sorted(map(str, leaders))
        lid = leaders.pop()
        if lid not in views:
            return False, "leader %s is not a member" % lid
        idx = {c.get("state_index") for _, c in views.values()}
        if len(idx) != 1:
            return False, "state indexes differ: %s" % sorted(idx)
        digests = {table_digest(c) for _, c in views.values()}
        if len(digests) != 1:
            return False, "tables differ at one index"
        _, c = views[lid]
        want = {n.node_id for n in members}
        st = {x["id"]: x.get("status") for x in c["cluster"]["nodes"]}
        bad = {k: v for k, v in st.items() if (k in want and v != "active")}
        missing = want - set(st)
        if bad or missing:
            return False, "statuses %s missing %s" % (bad, sorted(missing))
        why = unbalanced(c, want, self.rf)
        if why:
            return False, why
        if self.kv:
            for n in members:
                k = n.get("/internal/kv-stats")
                if not k or not k.get("ready"):
                    return False, "kv on %s not ready" % n.node_id
        return True, {"leader": lid, "state_index": idx.pop()}

    def wait_converged(self, timeout=CONVERGE_TIMEOUT):
        deadline = self.now() + timeout
        last = None
        for _ in range(int(timeout / 0.1) + 2):
            try:
                ok, why = self.converged()
            except (OSError, ValueError, KeyError, TypeError) as e:
                ok, why = False, repr(e)
            if ok:
                return True, why
            last = why
            if self.now() >= deadline:
                break
            time.sleep(0.1)
        return False, last

    def heal_all(self):
        """Removes every rule, resumes every paused node and restarts every
        member that is down; returns the disturbances it ends."""
        self.topo.heal()
        for n in self.nodes:
            n.resume()
        for n in self.members():
            if not n.running():
                self.restart(n)

    def settle(self, what):
        """After a heal: wait for convergence; a failure is a violation."""
        ok, info = self.wait_converged()
        if not ok:
            self.violation("no-convergence", "%s: not converged %ds after the heal: %s" % (
                what, CONVERGE_TIMEOUT, info))
            # More rounds on a cluster that does not recover only repeat this.
            self.broken = True
        else:
            self.event("converged", None, after=what, **info)
        # Everything was healed: the disturbances of running nodes are over
        # (a node that crashed stays disturbed until it runs again).
        up = {n.node_id for n in self.nodes if n.answering_expected()}
        self.undisturb([r for r in self.h.disturbed if r[2] is None and r[0] in up])
        return ok

    # -- recorder ------------------------------------------------------------

    def _start_poller(self, n):
        t = threading.Thread(target=self._poll_node, args=(n,), name="poll-" + n.node_id, daemon=True)
        self.pollers[n.node_id + "/" + str(n.slot)] = t
        t.start()

    def _poll_node(self, n):
        last_cluster_index = None
        last_inc = None
        for _ in range(10 ** 7):
            if self.stop_ev.is_set():
                return
            n.poll_exit()
            inc = n.incarnation
            if inc != last_inc:
                last_cluster_index, last_inc = None, inc
            if not n.answering_expected():
                self.stop_ev.wait(POLL)
                continue
            t0 = self.now()
            s = get_json(n.ip, "/consensus/stats", PROBE_TIMEOUT)
            t1 = self.now()
            if s is None:
                if n.answering_expected() and n.incarnation == inc:
                    self.h.add(self.h.samples, {"t": t0, "t1": t1, "node": n.node_id, "slot": n.slot,
                                                "inc": inc, "kind": "noanswer"})
                self.stop_ev.wait(POLL)
                continue
            self.h.add(self.h.samples, {
                "t": t0, "t1": t1, "node": n.node_id, "slot": n.slot, "inc": inc, "kind": "stats",
                "term": s.get("term"), "state": s.get("state"), "leader": s.get("leader_id"),
                "state_index": s.get("state_index"), "self": s.get("node_id")})
            if s.get("state_index") != last_cluster_index:
                t0 = self.now()
                c = get_json(n.ip, "/cluster", PROBE_TIMEOUT)
                if c and "cluster" in c:
                    last_cluster_index = c.get("state_index")
                    self.h.add(self.h.samples, cluster_sample(c, t0, self.now(), n, inc))
            self.stop_ev.wait(POLL)

    def start_recording(self):
        self.threads.append(True)
        for n in self.nodes:
            self._start_poller(n)

    # -- KV clients ----------------------------------------------------------

    def start_clients(self, count=4, keys=6):
        self.keys = ["key-%d" % i for i in range(keys)]
        for c in range(count):
            rng = random.Random(self.seed * 1000 + c)
            t = threading.Thread(target=self._client, args=(c, rng), name="kv-%d" % c, daemon=True)
            self.threads.append(t)
            t.start()

    def _client(self, cid, rng):
        seq = 0
        for _ in range(10 ** 7):
            if self.clients_stop.is_set():
                return
            targets = self.live()
            if not targets:
                self.clients_stop.wait(0.1)
                continue
            n = rng.choice(targets)
            key = rng.choice(self.keys)
            rec = self.kv_op(cid, n, key, "w" if rng.random() < 0.5 else "r", seq)
            seq += 1
            # A little slower after an error (a refused connection returns at once).
            self.clients_stop.wait(rng.uniform(0.005, 0.03) + (0.05 if rec["complete"] is None else 0))

    def kv_op(self, cid, n, key, kind, seq):
        path = "/kv/" + urllib.parse.quote(key, safe="")
        value = "c%d-%d" % (cid, seq) if kind == "w" else None
        rec = {"client": cid, "key": key, "kind": kind, "value": value, "node": n.node_id, "slot": n.slot,
               "invoke": self.now(), "complete": None, "status": None}
        try:
            st, hd, body = request(n.ip, "PUT" if kind == "w" else "GET", path,
                                   body=value.encode() if value else None, headers=AUTH,
                                   timeout=KV_TIMEOUT)
            rec["status"] = st
            if kind == "w":
                if st == 200:
                    rec["complete"] = self.now()
            elif st == 200:
                rec["complete"] = self.now()
                rec["value"] = body.decode("utf-8", "replace")
                rec["served_by"] = hd.get("x-kv-served-by")
            elif st == 404 and b"NOT_FOUND" in body:
                rec["complete"] = self.now()
                rec["value"] = None
            if st != 200 and len(body) < 400:
                rec["error"] = body.decode("utf-8", "replace")
        except OSError as e:
            rec["status"] = "error"
            rec["error"] = str(e)[:100]
        rec["end"] = self.now()
        self.h.add(self.h.ops, rec)
        return rec

    def start_coord(self, kinds, pinned=False):
        """The /v1 workloads named in kinds (workloads.ALL); pinned: also the
        lock client that talks to one node (pause-lock-holder)."""
        self.coord = Coord(self, kinds)
        self.coord.start(pinned=pinned)

    def final_reads(self):
        """After convergence: one read of every key through a member, so that
        a lost acknowledged write shows up in the history."""
        live = self.live()
        if not live:
            return
        for i, key in enumerate(self.keys):
            self.kv_op(99, live[i % len(live)], key, "r", i)
        self.coord.final_reads()

    # -- teardown ------------------------------------------------------------

    def stop_all(self):
        """Stops the clients, the recorder and every node (by PID). Returns
        a list of (node, code, needed_kill) for nodes stopped here."""
        self.clients_stop.set()
        for t in self.threads:
            if isinstance(t, threading.Thread):
                t.join(timeout=KV_TIMEOUT + 2)
        self.stop_ev.set()
        for t in list(self.pollers.values()):
            t.join(timeout=PROBE_TIMEOUT * 3)
        out = []
        for n in self.nodes:
            if n.running():
                code, killed = n.stop(timeout=10)
                out.append((n, code, killed))
        return out

    def kill_everything(self):
        """Last resort (exceptions, SIGINT): SIGKILL every node by PID."""
        self.clients_stop.set()
        self.stop_ev.set()
        for n in self.nodes:
            try:
                if n.running():
                    n.expect_exit = True
                    n.paused = False
                    n.kill9()
            except Exception:
                pass
        for mp in reversed(self.mounts):
            sh(["umount", "-l", mp], check=False)
        self.mounts = []

    def mount_tmpfs(self, path, size="8m"):
        os.makedirs(path, exist_ok=True)
        sh(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path])
        self.mounts.append(path)
        self.run.mounts.append(path)
        return path

    def leader_post(self, path, body=None, timeout=5.0):
        """POST to the leader (following one NOT_LEADER answer)."""
        ld = self.leader(timeout=timeout)
        if ld is None:
            return None
        try:
            return request(ld.ip, "POST", path, body=body if body is not None else b"",
                           headers=dict(AUTH), timeout=timeout)
        except OSError:
            return None


class SetupError(Exception):
    pass


def table_digest(c):
    """What must be equal on every node at one state index: nodes (id,
    status, addresses), partition rows and config."""
    cl = c["cluster"]
    nodes = sorted((x.get("id"), x.get("status"), x.get("raft_addr"), x.get("ip")) for x in cl["nodes"])
    parts = sorted((k, v.get("primary_node"), tuple(v.get("replica_nodes") or ()), v.get("epoch"))
                   for k, v in cl["partition_map"]["partitions"].items())
    return json.dumps([nodes, parts, cl.get("config")], sort_keys=True)


def cluster_sample(c, t0, t1, n, inc):
    cl = c["cluster"]
    parts = {k: (v.get("primary_node"), tuple(v.get("replica_nodes") or ()), v.get("epoch"))
             for k, v in cl["partition_map"]["partitions"].items()}
    return {"t": t0, "t1": t1, "node": n.node_id, "slot": n.slot, "inc": inc, "kind": "cluster",
            "state_index": c.get("state_index"), "digest": table_digest(c),
            "statuses": {x["id"]: x.get("status") for x in cl["nodes"]}, "parts": parts}


def unbalanced(c, members, rf):
    """Why the table in /cluster answer c is not complete and balanced over
    `members`, or None."""
    parts = c["cluster"]["partition_map"]["partitions"]
    n = len(members)
    want = min(rf, n)
    owned = {m: 0 for m in members}
    prim = {m: 0 for m in members}
    for k, v in parts.items():
        owners = [v.get("primary_node")] + list(v.get("replica_nodes") or ())
        if len(owners) != want or len(set(owners)) != want:
            return "%s has owners %s (want %d distinct)" % (k, owners, want)
        for o in owners:
            if o not in owned:
                return "%s is owned by %s, not a member" % (k, o)
            owned[o] += 1
        prim[owners[0]] += 1
    share = len(parts) * want / n
    pshare = len(parts) / n
    for m in members:
        if abs(owned[m] - share) > 1 or abs(prim[m] - pshare) > 1:
            return "unbalanced: owned %s primaries %s" % (owned, prim)
    return None
