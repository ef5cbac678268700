"""Workloads on the built-in coordination API (/v1, served by every node
beside the example app's /kv routes), run from the client namespace like the
KV clients, recorded in the History for checks.py:

* cas: clients doing linearizable reads (GET /v1/kv/<key>?consistent=1) and
  compare-and-sets from the value they read (a value-compare transaction,
  POST /v1/kv, or PUT ?cas=<mod_index>), now and then from an older value so
  that some are refused; recorded in h.ops like the KV ops (keys "v1:...",
  kinds "r" and "cas") for the linearizability checker.
* locks: clients that each own a TTL session (a keep-alive thread), acquire
  POST /v1/locks/res through random nodes, use a fenced resource that lives
  here (it accepts token t only if t >= the newest token it accepted), hold
  briefly and release. One of them sometimes "pauses" while it holds the
  lock: no keep-alives and no use for longer than the TTL, then it uses the
  resource with its old token (as a SIGSTOPped holder would on SIGCONT). In
  pause-lock-holder one more client sends all its traffic through one node,
  which the scenario SIGSTOPs while that client holds the lock.
* leases: clients keeping TTL sessions alive through random nodes at uneven
  intervals; a keep-alive answered 404 ends the session (a new one starts).

Every keep-alive and session creation (of lock and lease clients) goes to
h.keepalives, every lock request and release to h.lockops, every grant to
h.grants, every use of the resource to h.uses.

Every loop is bounded in count and in time; the clients stop when
h.clients_stop is set. The waits here are a client's pacing (a few tens of
milliseconds), a paused holder's pause (a fault's duration) and bounded waits
on a condition.
"""

import json
import random
import threading
import time
import urllib.parse

from nodes import AUTH, request, wait_for

V1_TIMEOUT = 6.0        # one /v1 KV request (a write or a barrier waits up to 10 s on the node)
CAS_KEYS = ["cas-0", "cas-1"]
CAS_CLIENTS = 2
LOCK_NAME = "res"
LOCK_CLIENTS = 3        # plus the pinned one in pause-lock-holder
LOCK_TTL = 2.0
LOCK_WAIT = 2.0         # the lock request's own timeout (then 504)
LOCK_KEEPALIVE = LOCK_TTL / 4
LEASE_CLIENTS = 2
LEASE_TTL = 3.0
KEEPALIVE_TIMEOUT = 1.0  # one keep-alive: a paused node must not eat the TTL
PAUSE_EVERY = 5.0       # the pausing lock client pauses at most once per this many seconds

ALL = ("cas", "locks", "leases")


def _json(body):
    try:
        v = json.loads(body)
        return v if isinstance(v, dict) else None
    except ValueError:
        return None


def _code(doc):
    e = doc.get("error") if doc else None
    return e.get("code") if isinstance(e, dict) else None


class FencedResource:
    """The protected resource: accepts an operation carrying token t only
    if t >= the newest token it has accepted; records every attempt."""

    def __init__(self, h):
        self.h = h
        self.lock = threading.Lock()
        self.newest = 0

    def use(self, client, session, token, what):
        with self.lock:
            t = self.h.now()
            ok = token >= self.newest
            rec = {"t": t, "client": client, "session": session, "token": token, "what": what,
                   "accepted": ok, "newest": self.newest}
            if ok:
                self.newest = token
            self.h.h.uses.append(rec)
        return ok


class Session:
    """A TTL session of one client, with its keep-alive thread."""

    def __init__(self, sid, ttl):
        self.id = sid
        self.ttl = ttl
        self.ended = threading.Event()     # a keep-alive found it ended (404), or given up
        self.hold = threading.Event()      # the owner is "paused": no keep-alives
        self.inflight = False
        self.last_invoke = None


class Coord:
    def __init__(self, h, kinds):
        self.h = h
        self.kinds = set(kinds)
        self.resource = FencedResource(h)
        # pause-lock-holder: the node the pinned client talks to, and the
        # handshake with the scenario.
        self.pin_node = None
        self.pin_want = threading.Event()      # the scenario wants the pinned client to hold
        self.pin_holding = threading.Event()   # it holds (and waits for pin_release)
        self.pin_release = threading.Event()
        self.pin_token = None

    # -- plumbing ---------------------------------------------------------------

    def start(self, pinned=False):
        h = self.h
        specs = []
        if "cas" in self.kinds:
            specs += [(self._cas_client, 10 + i, None) for i in range(CAS_CLIENTS)]
        if "locks" in self.kinds:
            specs += [(self._lock_client, 20 + i, "pauser" if i == 0 else "plain") for i in range(LOCK_CLIENTS)]
            if pinned:
                specs.append((self._lock_client, 20 + LOCK_CLIENTS, "pinned"))
        if "leases" in self.kinds:
            specs += [(self._lease_client, 30 + i, None) for i in range(LEASE_CLIENTS)]
        for fn, cid, role in specs:
            rng = random.Random(h.seed * 1000 + cid)
            t = threading.Thread(target=fn, args=(cid, rng, role), name="v1-%d" % cid, daemon=True)
            h.threads.append(t)
            t.start()

    def stopping(self):
        return self.h.clients_stop.is_set()

    def pause(self, seconds):
        self.h.clients_stop.wait(max(0.0, seconds))

    def target(self, rng, role=None):
        if role == "pinned" and self.pin_node is not None and not self.pin_node.left:
            return self.pin_node
        live = self.h.live()
        return rng.choice(live) if live else None

    def call(self, n, method, path, body=None, timeout=V1_TIMEOUT):
        """(status, decoded JSON object or None, error text)."""
        try:
            st, _, raw = request(n.ip, method, path, body=body, headers=AUTH, timeout=timeout)
        except OSError as e:
            return "error", None, str(e)[:100]
        doc = _json(raw)
        return st, doc, (raw.decode("utf-8", "replace")[:200] if st != 200 else None)

    # -- CAS ----------------------------------------------------------------------

    def read(self, cid, n, key):
        rec = {"client": cid, "key": "v1:" + key, "kind": "r", "value": None, "node": n.node_id,
               "slot": n.slot, "invoke": self.h.now(), "complete": None, "status": None, "api": "v1"}
        st, doc, err = self.call(n, "GET", "/v1/kv/%s?consistent=1" % urllib.parse.quote(key, safe=""))
        rec["status"] = st
        if st == 200 and doc is not None and isinstance(doc.get("value"), str):
            rec["complete"] = self.h.now()
            rec["value"] = doc["value"]
            rec["mod_index"] = doc.get("mod_index")
        elif st == 404 and _code(doc) == "NOT_FOUND":
            rec["complete"] = self.h.now()
            rec["mod_index"] = 0
        if err:
            rec["error"] = err
        rec["end"] = self.h.now()
        self.h.h.add(self.h.h.ops, rec)
        return rec

    def cas(self, cid, n, key, expected, mod, new, by_mod):
        """A compare-and-set expected -> new: PUT ?cas=<mod> (by_mod) or a
        transaction comparing the value (create == 0 for an absent key)."""
        rec = {"client": cid, "key": "v1:" + key, "kind": "cas", "expected": expected, "value": new,
               "variant": "mod" if by_mod else "txn", "node": n.node_id, "slot": n.slot,
               "invoke": self.h.now(), "complete": None, "status": None, "api": "v1"}
        if by_mod:
            rec["mod"] = mod
            st, doc, err = self.call(n, "PUT", "/v1/kv/%s?cas=%d" % (urllib.parse.quote(key, safe=""), mod),
                                     body=new.encode())
            ok = st == 200 and doc is not None and "index" in doc
            refused = st == 409 and _code(doc) == "CONFLICT"
        else:
            cmp = ({"key": key, "target": "value", "op": "==", "value": expected} if expected is not None
                   else {"key": key, "target": "create", "op": "==", "value": 0})
            st, doc, err = self.call(n, "POST", "/v1/kv", body={
                "compares": [cmp], "ops": [{"type": "put", "key": key, "value": new}]})
            ok = st == 200 and doc is not None and doc.get("succeeded") is True
            refused = st == 409 and doc is not None and doc.get("succeeded") is False
        rec["status"] = st
        if ok or refused:
            rec["complete"] = self.h.now()
            rec["refused"] = refused
            if ok:
                rec["index"] = doc.get("index")
        if err:
            rec["error"] = err
        rec["end"] = self.h.now()
        self.h.h.add(self.h.h.ops, rec)
        return rec

    def _cas_client(self, cid, rng, _role):
        seq = 0
        past = {k: [] for k in CAS_KEYS}    # (value, mod_index) this client read, newest last
        for _ in range(10 ** 7):
            if self.stopping():
                return
            n = self.target(rng)
            if n is None:
                self.pause(0.1)
                continue
            key = rng.choice(CAS_KEYS)
            rd = self.read(cid, n, key)
            if rd["complete"] is None or rd.get("mod_index") is None:
                self.pause(0.05)
                continue
            seen = past[key]
            seen.append((rd["value"], rd["mod_index"]))
            del seen[:-6]
            # Mostly from what was just read; sometimes from an older value,
            # so that some compare-and-sets are refused. A mod index names
            # one write, and every write's value is unique: comparing the mod
            # index is comparing the value.
            expected, mod = seen[-1] if rng.random() < 0.75 or len(seen) < 2 else rng.choice(seen[:-1])
            n = self.target(rng)
            if n is None or self.stopping():
                continue
            rec = self.cas(cid, n, key, expected, mod, "x%d-%d" % (cid, seq), rng.random() < 0.5)
            seq += 1
            self.pause(rng.uniform(0.005, 0.03) + (0.05 if rec["complete"] is None else 0))

    def final_reads(self):
        if "cas" not in self.kinds:
            return
        live = self.h.live()
        for i, key in enumerate(CAS_KEYS):
            if live:
                self.read(99, live[i % len(live)], key)

    # -- sessions ---------------------------------------------------------------

    def _ka_rec(self, cid, sid, ttl, kind, n):
        return {"client": cid, "session": sid, "ttl": ttl, "kind": kind, "node": n.node_id,
                "slot": n.slot, "invoke": self.h.now(), "complete": None, "status": None}

    def new_session(self, cid, ttl, rng, role=None):
        n = self.target(rng, role)
        if n is None:
            return None
        rec = self._ka_rec(cid, None, ttl, "create", n)
        st, doc, err = self.call(n, "POST", "/v1/sessions", body={"ttl": "%gs" % ttl}, timeout=V1_TIMEOUT)
        rec["status"] = st
        if st == 200 and doc and isinstance(doc.get("id"), int):
            rec["complete"] = self.h.now()
            rec["session"] = doc["id"]
        elif err:
            rec["error"] = err
        self.h.h.add(self.h.h.keepalives, rec)
        if rec["session"] is None:
            return None
        s = Session(rec["session"], ttl)
        s.last_invoke = rec["invoke"]
        return s

    def keepalive(self, cid, s, n):
        """One keep-alive: 'ok', 'ended' (404 NOT_FOUND) or 'unknown'."""
        rec = self._ka_rec(cid, s.id, s.ttl, "renew", n)
        s.last_invoke = rec["invoke"]
        st, doc, err = self.call(n, "PUT", "/v1/sessions/%d" % s.id, timeout=KEEPALIVE_TIMEOUT)
        rec["status"] = st
        out = "unknown"
        if st == 200:
            rec["complete"] = self.h.now()
            out = "ok"
        elif st == 404 and _code(doc) == "NOT_FOUND":
            rec["complete"] = self.h.now()
            rec["ended"] = True
            out = "ended"
        if err:
            rec["error"] = err
        self.h.h.add(self.h.h.keepalives, rec)
        return out

    def _keepalive_loop(self, cid, s, rng, role):
        for _ in range(10 ** 6):
            if self.stopping() or s.ended.is_set():
                return
            if s.hold.is_set():
                self.pause(0.05)
                continue
            n = self.target(rng, role)
            if n is None:
                self.pause(0.1)
                continue
            s.inflight = True
            try:
                out = self.keepalive(cid, s, n)
            finally:
                s.inflight = False
            if out == "ended":
                s.ended.set()
                return
            self.pause(LOCK_KEEPALIVE if out == "ok" else 0.1)

    # -- locks -----------------------------------------------------------------------

    def _lockop(self, cid, s, kind, n, **kw):
        rec = {"client": cid, "session": s.id, "kind": kind, "node": n.node_id, "slot": n.slot,
               "invoke": self.h.now(), "complete": None, "status": None}
        rec.update(kw)
        return rec

    def acquire(self, cid, s, n, value):
        rec = self._lockop(cid, s, "acquire", n, value=value)
        st, doc, err = self.call(n, "POST", "/v1/locks/" + LOCK_NAME,
                                 body={"session": s.id, "timeout": "%gs" % LOCK_WAIT, "value": value},
                                 timeout=LOCK_WAIT + 4)
        rec["status"] = st
        if st == 200 and doc and isinstance(doc.get("token"), int):
            rec["complete"] = self.h.now()
            rec["token"] = doc["token"]
            rec["key"] = doc.get("key")
            self.h.h.add(self.h.h.grants, {"client": cid, "session": s.id, "ttl": s.ttl, "token": doc["token"],
                                           "key": doc.get("key"), "node": n.node_id, "invoke": rec["invoke"],
                                           "complete": rec["complete"]})
        elif st in (404, 504):
            rec["complete"] = self.h.now()
            rec["code"] = _code(doc)
        if err:
            rec["error"] = err
        self.h.h.add(self.h.h.lockops, rec)
        return rec

    def release(self, cid, s, n, kind="release"):
        """DELETE /v1/locks/res?session=: every key of this session under the
        lock (held or queued). 'ok', 'none' (404) or 'unknown'."""
        rec = self._lockop(cid, s, kind, n)
        st, doc, err = self.call(n, "DELETE", "/v1/locks/%s?session=%d" % (LOCK_NAME, s.id))
        rec["status"] = st
        if st in (200, 404):
            rec["complete"] = self.h.now()
        if err:
            rec["error"] = err
        self.h.h.add(self.h.h.lockops, rec)
        return "ok" if st == 200 else "none" if st == 404 else "unknown"

    def _lock_client(self, cid, rng, role):
        s = None
        seq = 0
        last_pause = self.h.now()
        for _ in range(10 ** 6):
            if self.stopping():
                return
            if s is None or s.ended.is_set():
                s = self.new_session(cid, LOCK_TTL, rng, role)
                if s is None:
                    self.pause(0.2)
                    continue
                t = threading.Thread(target=self._keepalive_loop, args=(cid, s, rng, role),
                                     name="v1-ka-%d-%d" % (cid, s.id), daemon=True)
                self.h.threads.append(t)
                t.start()
            n = self.target(rng, role)
            if n is None:
                self.pause(0.1)
                continue
            seq += 1
            a = self.acquire(cid, s, n, "c%d-%d" % (cid, seq))
            if "token" not in a:
                # Not held. Whatever the answer, take this session's key out
                # of the queue (a timed-out or retried request may have left
                # one); if even that is unknown, give the session up (it
                # expires) rather than leave a key that could hold the lock.
                if a["status"] == 404:
                    self.pause(0.1)     # a node that has not seen the session yet, or it ended
                    continue
                m = self.target(rng, role)
                if m is None or self.release(cid, s, m, "cleanup") == "unknown":
                    s.ended.set()
                self.pause(0.02)
                continue
            token = a["token"]
            self.resource.use(cid, s.id, token, "first")
            if role == "pinned" and self.pin_want.is_set():
                self.pin_token = token
                self.h.event("pinned-holds", self.pin_node.node_id if self.pin_node else None, client=cid,
                             token=token, session=s.id)
                self.pin_holding.set()
                wait_for(lambda: self.pin_release.is_set() or self.stopping(), 40, poll=0.05)
                self.resource.use(cid, s.id, token, "after node pause")
            elif role == "pauser" and self.h.now() - last_pause > PAUSE_EVERY and rng.random() < 0.5:
                self._pause_holder(cid, s, token)
                last_pause = self.h.now()
            else:
                self.pause(rng.uniform(0.05, 0.3))     # holding it
                self.resource.use(cid, s.id, token, "second")
            m = self.target(rng, role)
            if m is not None and self.release(cid, s, m) == "unknown":
                s.ended.set()
            self.pause(rng.uniform(0.01, 0.1))

    def _pause_holder(self, cid, s, token):
        """The holder stops (keep-alives and use) for longer than the TTL,
        then uses the resource with its old token."""
        s.hold.set()
        wait_for(lambda: not s.inflight, KEEPALIVE_TIMEOUT + 1, poll=0.02)
        self.h.event("holder-pause", None, client=cid, token=token, session=s.id)
        # The pause: past the TTL counted from the last keep-alive sent.
        self.pause((s.last_invoke or self.h.now()) + s.ttl + 0.5 - self.h.now())
        # Then until someone newer used the resource (bounded), so that the
        # old token meets a newer one.
        wait_for(lambda: self.resource.newest > token or self.stopping(), 6, poll=0.05)
        ok = self.resource.use(cid, s.id, token, "after pause")
        self.h.event("holder-resume", None, client=cid, token=token, accepted=ok)
        s.hold.clear()

    # -- leases ------------------------------------------------------------------------

    def _lease_client(self, cid, rng, _role):
        s = None
        for _ in range(10 ** 6):
            if self.stopping():
                return
            if s is None:
                s = self.new_session(cid, LEASE_TTL, rng)
                if s is None:
                    self.pause(0.2)
                    continue
            # Uneven keep-alive intervals, up to about half the TTL.
            self.pause(rng.uniform(0.2, LEASE_TTL * 0.55))
            n = self.target(rng)
            if n is None or self.stopping():
                continue
            if self.keepalive(cid, s, n) == "ended":
                s = None
