"""ckrun processes inside the harness's namespaces, and small HTTP helpers.

A FaultNode is one node id in one slot (namespace). It is started as
`ip netns exec <ns> ckrun <app>` (ip execs ckrun, so the PID we hold is
ckrun's), stopped and signalled only by that PID, and remembers what the
harness did to it (paused, killed) so that the checker can tell an expected
exit from a crash. Every wait is bounded in count and in time.
"""

import http.client
import json
import os
import signal
import subprocess
import threading
import time

from netns import node_ip

HTTP_PORT = 8080
RAFT_PORT = 9001
TOKEN = "fault-suite-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


def request(ip, method, path, body=None, headers=None, timeout=2.0, port=HTTP_PORT):
    """One request on a fresh connection: (status, headers dict lower-case,
    body bytes). Network errors raise OSError (timeouts included)."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    except http.client.HTTPException as e:
        raise OSError("http: %s" % e)
    finally:
        conn.close()


def get_json(ip, path, timeout=1.0):
    """The decoded body of a 200, else None (also when nothing answers)."""
    try:
        st, _, body = request(ip, "GET", path, timeout=timeout, headers=AUTH)
    except OSError:
        return None
    if st != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class FaultNode:
    def __init__(self, harness, node_id, slot, data_dir, log_path, env):
        self.h = harness
        self.node_id = node_id
        self.slot = slot
        self.ip = node_ip(slot)
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = dict(env)
        self.proc = None
        self.incarnation = 0
        self.paused = False
        self.expect_exit = False
        self.exits = []          # (t, code, expected)
        self.lock = threading.RLock()
        self._noted = 0
        self.may_exit = False    # an exit with a code (not a signal) is acceptable
        self.left = False        # removed from the cluster on purpose (POST /leave)

    @property
    def http_addr(self):
        return "%s:%d" % (self.ip, HTTP_PORT)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def answering_expected(self):
        """Whether the node should answer HTTP now (running, not paused)."""
        return self.running() and not self.paused

    def full_env(self):
        e = {k: v for k, v in os.environ.items()
             if k in ("PATH", "HOME", "LANG", "LC_ALL", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LD_PRELOAD")}
        e.update({
            "NODE_ID": self.node_id,
            "HTTP_ADDR": self.http_addr,
            "RAFT_ADDR": "%s:%d" % (self.ip, RAFT_PORT),
            "DATA_DIR": self.data_dir,
        })
        if os.environ.get("FAULT_TOKEN", "1") != "0":
            e["CLUSTER_TOKEN"] = TOKEN
        e.update(self.env)
        return e

    def spawn(self):
        with self.lock:
            if self.running():
                raise RuntimeError("%s already running" % self.node_id)
            self.incarnation += 1
            self.paused = False
            self.expect_exit = False
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "ab") as log:
                log.write(("---- %s start #%d in slot %d (%s)\n" % (
                    self.node_id, self.incarnation, self.slot, self.ip)).encode())
                log.flush()
                self.proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.h.topo.ns_of(self.slot), self.h.ckrun] + self.h.app_args,
                    env=self.full_env(), cwd=self.h.source_dir, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, start_new_session=True)
            self.h.event("start", self.node_id, incarnation=self.incarnation, pid=self.proc.pid)
        return self

    def poll_exit(self):
        """Notices an exit (once); returns (code, expected) or None."""
        with self.lock:
            if self.proc is None or self._noted == self.incarnation:
                return None
            code = self.proc.poll()
            if code is None:
                return None
            self._noted = self.incarnation
            rec = (time.monotonic(), code, self.expect_exit, self.incarnation)
            self.exits.append(rec)
            self.paused = False
            self.h.event("exit", self.node_id, code=code, expected=self.expect_exit,
                         incarnation=self.incarnation)
            if not self.expect_exit:
                # A crashed node is down until the harness restarts it.
                self.h.disturb([self.node_id], "exited by itself")
            return rec

    def _signal(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill9(self):
        with self.lock:
            if not self.running():
                self.poll_exit()
                return None
            self.expect_exit = True
            self.h.event("kill9", self.node_id)
            self._signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise RuntimeError("%s: pid %d survived SIGKILL" % (self.node_id, self.proc.pid))
        self.poll_exit()
        return self.proc.returncode

    def stop(self, timeout=10.0):
        """SIGTERM (after SIGCONT if paused), a bounded wait, then SIGKILL.
        Returns (code, needed_kill)."""
        with self.lock:
            if not self.running():
                self.poll_exit()
                return (self.proc.returncode if self.proc else None), False
            self.expect_exit = True
            self.h.event("stop", self.node_id)
            if self.paused:
                self._signal(signal.SIGCONT)
                self.paused = False
            self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
            killed = False
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            killed = True
        self.poll_exit()
        return self.proc.returncode, killed

    def pause(self):
        with self.lock:
            if not self.running():
                return False
            self.paused = True
            self.h.event("pause", self.node_id)
            self._signal(signal.SIGSTOP)
            return True

    def resume(self):
        with self.lock:
            if not self.paused:
                return False
            self._signal(signal.SIGCONT)
            self.paused = False
            self.h.event("resume", self.node_id)
            return True

    # -- views -------------------------------------------------------------

    def get(self, path, timeout=1.0):
        if not self.answering_expected():
            return None
        return get_json(self.ip, path, timeout)

    def ready(self):
        """/ready 200 and the KV store's partitions all copied."""
        if not self.answering_expected():
            return False
        r = self.get("/ready")
        if not r or not r.get("ready"):
            return False
        if self.h.kv:
            s = self.get("/internal/kv-stats")
            return bool(s and s.get("ready"))
        return True

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=30):
        return "\n".join(self.log_text().splitlines()[-lines:])


def wait_for(pred, timeout, poll=0.05, what="condition"):
    """pred() until truthy, at most `timeout` s and a bounded number of
    tries; returns the value, or None when it gave up."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / poll) + 2):
        try:
            v = pred()
        except (OSError, ValueError, KeyError):
            v = None
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return None
