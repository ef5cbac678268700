#!/usr/bin/env python3
"""Cluster benchmark: formation, failover, handover, failure detection, idle RSS.

Runs real ckrun processes on 127.0.0.1 and prints figures; it asserts nothing
about speed (figures depend on the machine and on the runtime's timing
options: ELECTION_TIMEOUT, HEARTBEAT_INTERVAL, DOWN_AFTER, ...).

    CK_BUILD_DIR=build python3 tests/bench/cluster_failover.py [--quick] [--only=failover]

(CK_BENCH_KEEP=1 keeps each cluster's logs and data dirs.)

What is measured (wall clock, polled every POLL seconds with a direct
http.client request of short timeout, so measurement overhead stays small):

* formation (3 and 10 nodes): from spawning every process at once (node 1
  bootstraps, the others join through it) until every node answers /ready
  and reports the same leader;
* failover after kill -9 (10 rounds, 3 nodes): from SIGKILL of the leader
  until every survivor reports the same new leader; between rounds the killed
  node restarts on its data dir and the bench waits until it is active again;
* the same failover on etcd (Debian's etcd-server, when installed), 3
  members at the same 300 ms election timeout and 50 ms heartbeat, in the
  same run, polled the same way (/v3/maintenance/status);
* graceful handover (5 rounds): from SIGTERM to the leader until the
  survivors agree on a new leader;
* crashed follower marked down (5 rounds): from SIGKILL of a follower until
  the leader's /nodes shows it "down";
* idle RSS per node (VmRSS from /proc/<pid>/status) of a 3-node cluster after
  2 s idle.

Standalone (no pytest). Every process it starts is killed on exit, whatever
happens; every wait is bounded.
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdpeer  # noqa: E402

HOST = "127.0.0.1"
POLL = 0.01            # seconds between polls while measuring
HTTP_TIMEOUT = 0.3     # one probe
WAIT_LIMIT = 60.0      # give up on any wait after this long (a bound, not an expectation)

SOURCE_DIR = os.environ.get("CK_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_DIR = os.path.abspath(os.environ.get("CK_BUILD_DIR") or os.path.join(SOURCE_DIR, "build"))
CKRUN = os.path.join(BUILD_DIR, "ckrun")

_PROCS = {}   # pid -> Popen, for cleanup


def _cleanup():
    for pid, p in list(_PROCS.items()):
        if p.poll() is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _PROCS.pop(pid, None)


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


class BenchError(RuntimeError):
    pass


_HANDED_OUT = set()


def free_port():
    """A port nothing listens on now and that this run has not handed out
    before: the kernel may give a just-released port out again, and a node
    whose HTTP and raft ports came out the same fails to start."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise BenchError("no fresh port after 100 tries")


def get(port, path, timeout=HTTP_TIMEOUT):
    """(status, decoded JSON or None), or (None, None) when nothing answers."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, None
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        c.close()


def wait_until(pred, what, limit=WAIT_LIMIT, poll=POLL):
    """Polls pred() until truthy; returns (value, seconds). Bounded in time
    and in count."""
    t0 = time.monotonic()
    for _ in range(int(limit / poll) + 1):
        v = pred()
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            break
        time.sleep(poll)
    raise BenchError("gave up after %.0fs waiting for %s" % (limit, what))


class Node:
    def __init__(self, base, name, join=None):
        self.name = name
        self.http_port, self.raft_port = free_port(), free_port()
        self.data_dir = os.path.join(base, name + "-data")
        self.log_path = os.path.join(base, name + ".log")
        self.join = join
        self.proc = None

    @property
    def http_addr(self):
        return "%s:%d" % (HOST, self.http_port)

    def env(self):
        e = dict(os.environ)
        for k in ("JOIN_ADDR", "BOOTSTRAP", "NODE_NAME", "CLUSTER_TOKEN", "ADVERTISE_HTTP",
                  "PARTITION_COUNT", "REPLICATION_FACTOR", "VOTERS", "ELECTION_TIMEOUT",
                  "HEARTBEAT_TIMEOUT", "HEARTBEAT_INTERVAL", "SUSPECT_AFTER", "DOWN_AFTER"):
            e.pop(k, None)
        e.update({"NODE_ID": self.name, "HTTP_ADDR": self.http_addr,
                  "RAFT_ADDR": "%s:%d" % (HOST, self.raft_port), "DATA_DIR": self.data_dir,
                  "CK_LOG_LEVEL": "info"})
        if self.join:
            e["JOIN_ADDR"] = self.join
        else:
            e["BOOTSTRAP"] = "true"
        return e

    def spawn(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([CKRUN], env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        _PROCS[self.proc.pid] = self.proc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError("%s exited with %s; log %s:\n%s" % (
                self.name, self.proc.returncode, self.log_path, self.tail()))

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reap(self, limit=15):
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=10)
        _PROCS.pop(self.proc.pid, None)
        return code

    def kill9(self):
        self.signal(signal.SIGKILL)
        return self.reap()

    def ready(self):
        st, _ = get(self.http_port, "/ready")
        return st == 200

    def leader(self):
        st, j = get(self.http_port, "/consensus/leader")
        return j.get("leader_id") or None if st == 200 and j else None

    def stats(self):
        st, j = get(self.http_port, "/consensus/stats")
        return j if st == 200 else None

    def statuses(self):
        st, j = get(self.http_port, "/nodes?limit=10000")
        return {n["id"]: n["status"] for n in j["nodes"]} if st == 200 and j else None

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None


class Cluster:
    def __init__(self, size):
        self.base = tempfile.mkdtemp(prefix="ck-bench-")
        self.nodes = [Node(self.base, "n1")]
        for i in range(2, size + 1):
            self.nodes.append(Node(self.base, "n%d" % i, join=self.nodes[0].http_addr))

    def by_id(self, nid):
        return next(n for n in self.nodes if n.name == nid)

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def agreed_leader(self, nodes=None):
        """The leader id every given node reports, when they agree on one of
        themselves; else None."""
        nodes = nodes or self.live()
        ids = {n.name for n in nodes}
        first = None
        for n in nodes:
            lid = n.leader()
            if lid is None or lid not in ids or (first is not None and lid != first):
                return None
            first = lid
        return first

    def converged(self):
        """Every live node ready, same leader, same state index, all active."""
        nodes = self.live()
        for n in nodes:
            n.check_alive()
        seen = set()
        for n in nodes:
            s = n.stats()
            if not s or not s.get("leader_id"):
                return False
            seen.add((s["leader_id"], s["state_index"]))
        if len(seen) != 1:
            return False
        st = nodes[0].statuses()
        return bool(st) and all(st.get(n.name) == "active" for n in nodes) and \
            all(n.ready() for n in nodes)

    def form(self):
        """Spawns every node at once; returns seconds until all are ready and
        agree on a leader."""
        t0 = time.monotonic()
        for n in self.nodes:
            n.spawn()

        def ok():
            for n in self.nodes:
                n.check_alive()
            return all(n.ready() for n in self.nodes) and self.agreed_leader(self.nodes)
        wait_until(ok, "formation of %d nodes" % len(self.nodes))
        return time.monotonic() - t0

    def wait_converged(self, what="convergence"):
        wait_until(self.converged, what, poll=0.05)

    def restart(self, n, what):
        n.spawn()
        wait_until(lambda: (n.check_alive() or True) and n.ready(), "%s ready" % n.name, poll=0.02)
        self.wait_converged(what)

    def close(self):
        for n in self.nodes:
            if n.alive():
                n.signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None and n.proc.pid in _PROCS:
                n.reap(limit=15)
        if os.environ.get("CK_BENCH_KEEP"):
            print("  logs kept in %s" % self.base)
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def ms(x):
    return "%.0f ms" % (x * 1000)


def summary(label, xs):
    print("%s (%d rounds): median %s, max %s  [%s]" % (
        label, len(xs), ms(statistics.median(xs)), ms(max(xs)), " ".join("%.0f" % (x * 1000) for x in xs)),
        flush=True)


def bench_formation(size, rounds):
    xs = []
    for _ in range(rounds):
        c = Cluster(size)
        try:
            xs.append(c.form())
        finally:
            c.close()
    summary("formation of %d nodes" % size, xs)


def bench_failover(rounds):
    c = Cluster(3)
    try:
        c.form()
        c.wait_converged()
        xs = []
        for r in range(rounds):
            old = c.by_id(c.agreed_leader())
            survivors = [n for n in c.live() if n is not old]
            t0 = time.monotonic()
            old.signal(signal.SIGKILL)
            wait_until(lambda: c.agreed_leader(survivors), "a new leader (round %d)" % (r + 1))
            xs.append(time.monotonic() - t0)
            old.reap()
            c.restart(old, "%s back after round %d" % (old.name, r + 1))
        summary("failover after kill -9", xs)
        return xs
    finally:
        c.close()


class EtcdMember:
    def __init__(self, base, name):
        self.name = name
        self.client_port, self.peer_port = free_port(), free_port()
        self.data_dir = os.path.join(base, name + "-data")
        self.log_path = os.path.join(base, name + ".log")
        self.proc = None
        self.argv = None

    def spawn(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=etcdpeer.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        _PROCS[self.proc.pid] = self.proc

    alive, check_alive, tail, signal, reap = Node.alive, Node.check_alive, Node.tail, Node.signal, Node.reap

    def status(self):
        return etcdpeer.status(self.client_port, timeout=HTTP_TIMEOUT)


class EtcdCluster:
    """Three etcd members at clusterkit's default timeouts (etcdpeer.py)."""

    def __init__(self, size=3):
        self.base = tempfile.mkdtemp(prefix="ck-bench-etcd-")
        self.nodes = [EtcdMember(self.base, "e%d" % i) for i in range(1, size + 1)]
        members = [(m.name, m.peer_port) for m in self.nodes]
        for m in self.nodes:
            m.argv = etcdpeer.argv(m.name, m.data_dir, m.client_port, m.peer_port, members, "ck-failover")

    def agreed_leader(self, nodes=None):
        """The member every given member reports as leader, when they agree
        on one of themselves; else None."""
        nodes = nodes or [m for m in self.nodes if m.alive()]
        sts = [m.status() for m in nodes]
        if not all(sts):
            return None
        leaders = {s[1] for s in sts}
        if len(leaders) != 1:
            return None
        by_id = {s[0]: m for s, m in zip(sts, nodes)}
        return by_id.get(leaders.pop())

    def form(self):
        for m in self.nodes:
            m.spawn()

        def ok():
            for m in self.nodes:
                m.check_alive()
            return self.agreed_leader(self.nodes)
        wait_until(ok, "etcd formation")

    def close(self):
        for m in self.nodes:
            if m.alive():
                m.signal(signal.SIGTERM)
        for m in self.nodes:
            if m.proc is not None and m.proc.pid in _PROCS:
                m.reap(limit=15)
        shutil.rmtree(self.base, ignore_errors=True)


def bench_failover_etcd(rounds):
    """The same measurement on etcd: from SIGKILL of the leader until both
    survivors report the same new leader (/v3/maintenance/status); the killed
    member then restarts on its data dir and the bench waits until all three
    agree again."""
    c = EtcdCluster(3)
    try:
        c.form()
        xs = []
        for r in range(rounds):
            old, _ = wait_until(lambda: c.agreed_leader(c.nodes), "etcd: all members agree (round %d)" % (r + 1),
                                poll=0.05)
            survivors = [m for m in c.nodes if m is not old]
            t0 = time.monotonic()
            old.signal(signal.SIGKILL)
            wait_until(lambda: c.agreed_leader(survivors), "etcd: a new leader (round %d)" % (r + 1))
            xs.append(time.monotonic() - t0)
            old.reap()
            old.spawn()
        summary("etcd %s: failover after kill -9" % (etcdpeer.version() or "?"), xs)
        return xs
    finally:
        c.close()


def bench_handover(rounds):
    c = Cluster(3)
    try:
        c.form()
        c.wait_converged()
        xs = []
        for r in range(rounds):
            old = c.by_id(c.agreed_leader())
            survivors = [n for n in c.live() if n is not old]
            t0 = time.monotonic()
            old.signal(signal.SIGTERM)
            wait_until(lambda: c.agreed_leader(survivors), "a new leader after SIGTERM (round %d)" % (r + 1))
            xs.append(time.monotonic() - t0)
            code = old.reap()
            if code != 0:
                print("  note: %s exited with %s after SIGTERM" % (old.name, code))
            c.restart(old, "%s back after handover round %d" % (old.name, r + 1))
        summary("graceful handover (SIGTERM to the leader)", xs)
    finally:
        c.close()


def bench_mark_down(rounds):
    c = Cluster(3)
    try:
        c.form()
        c.wait_converged()
        xs = []
        for r in range(rounds):
            leader = c.by_id(c.agreed_leader())
            victim = next(n for n in c.live() if n is not leader)
            t0 = time.monotonic()
            victim.signal(signal.SIGKILL)
            wait_until(lambda: (leader.statuses() or {}).get(victim.name) == "down",
                       "%s down (round %d)" % (victim.name, r + 1))
            xs.append(time.monotonic() - t0)
            victim.reap()
            c.restart(victim, "%s back after down round %d" % (victim.name, r + 1))
        summary("crashed follower marked down", xs)
    finally:
        c.close()


def bench_idle_rss():
    c = Cluster(3)
    try:
        c.form()
        c.wait_converged()
        time.sleep(2.0)
        rss = [(n.name, n.rss_kib()) for n in c.nodes]
        vals = [v for _, v in rss]
        print("idle RSS per node (3-node cluster, 2 s idle): %s; mean %.1f MiB" % (
            ", ".join("%s %.1f MiB" % (name, v / 1024) for name, v in rss),
            statistics.mean(vals) / 1024), flush=True)
    finally:
        c.close()


def bench_failover_beside_etcd(rounds):
    """clusterkit's failover, then etcd's in the same run (when installed),
    at the same election timeout and heartbeat (300 ms / 50 ms)."""
    ck = bench_failover(rounds)
    if not etcdpeer.ETCD:
        print("etcd not installed (Debian package etcd-server): no side-by-side failover figure")
        return
    et = bench_failover_etcd(rounds)
    print("# same run, failover after kill -9: clusterkit median %s max %s, etcd median %s max %s "
          "(issue 13's target: median <= etcd's, max <= 600 ms)" % (
              ms(statistics.median(ck)), ms(max(ck)), ms(statistics.median(et)), ms(max(et))), flush=True)


def main(argv):
    quick = "--quick" in argv
    only = next((a.split("=", 1)[1] for a in argv if a.startswith("--only=")), None)
    if not os.access(CKRUN, os.X_OK):
        print("ckrun not found at %s (set CK_BUILD_DIR)" % CKRUN, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print("clusterkit cluster benchmark: %s, poll %d ms, %d CPUs" % (
        CKRUN, POLL * 1000, os.cpu_count() or 0), flush=True)
    benches = [
        ("formation", lambda: (bench_formation(3, 1 if quick else 3), bench_formation(10, 1 if quick else 3))),
        ("failover", lambda: bench_failover_beside_etcd(3 if quick else 10)),
        ("handover", lambda: bench_handover(2 if quick else 5)),
        ("markdown", lambda: bench_mark_down(2 if quick else 5)),
        ("rss", bench_idle_rss),
    ]
    if only and only not in dict(benches):
        print("--only takes one of: %s" % ", ".join(name for name, _ in benches), file=sys.stderr)
        return 2
    try:
        for name, run in benches:
            if only in (None, name):
                run()
    except BenchError as e:
        print("bench failed: %s" % e, file=sys.stderr)
        return 1
    finally:
        _cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
