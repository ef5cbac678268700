"""A small harness for running real ckrun processes from pytest.

What it gives a test:

* ``free_port()``: a port on 127.0.0.1 that was free a moment ago (bind to
  port 0, read the port, release it). Another process may still take it
  before ckrun binds, so ``CkNode.start`` retries with fresh ports (and a fresh
  data dir) when the node exits early because one of its ports was taken.
* ``CkNode``: one ckrun process with its environment, its ports, its data dir
  under the test's tmp_path and its stderr captured to a log file. It starts,
  waits for /ready with a poll bounded in count and in time, speaks HTTP with
  urllib (every call has a timeout, proxies are never used), stops by PID
  (SIGTERM, a bounded wait, then SIGKILL) and can be killed with SIGKILL.
* ``ck`` (a pytest fixture, a ``CkFactory``): makes nodes and runs one-shot
  ckrun commands; at teardown it kills every process it started, whether the
  test passed or failed, and when the test failed it prints each node's log
  tail. Harness errors (a node that exits or never gets ready) carry the log
  tail in their message.

Every loop here is bounded in iterations and in time; only 127.0.0.1 is used;
processes are only ever signalled by their own PID.

Environment: CK_BUILD_DIR (where ckrun is; default <repo>/build) and
CK_SOURCE_DIR (the repository; default two levels above this file).
"""

import atexit
import errno
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

HOST = "127.0.0.1"

SOURCE_DIR = os.environ.get("CK_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_DIR = os.environ.get("CK_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
CKRUN = os.path.join(BUILD_DIR, "ckrun")

# Default bounds. They are limits for giving up, never expectations about
# speed: tests do not assert timings.
READY_TIMEOUT = 20.0      # seconds to wait for /ready
READY_POLL = 0.05         # seconds between /ready polls
STOP_TIMEOUT = 10.0       # seconds to wait after SIGTERM before SIGKILL
KILL_TIMEOUT = 10.0       # seconds to wait for a SIGKILLed process to be reaped
HTTP_TIMEOUT = 5.0        # seconds for one HTTP request
START_ATTEMPTS = 3        # tries with fresh ports when a port turns out taken
LOG_TAIL_LINES = 40

# Log lines that say a node could not bind one of its ports.
_BIND_FAILURE = re.compile(r"EADDRINUSE|address already in use", re.I)

# Every process started here, so that an interpreter exit (even after an
# interrupted session) still kills what fixture teardown did not reach.
_LIVE = {}


def _kill_leftovers():
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            try:
                os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=KILL_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                pass
        _LIVE.pop(pid, None)


atexit.register(_kill_leftovers)


class HarnessError(AssertionError):
    """A node misbehaved at the harness level (exited, never ready, hung)."""


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------

def free_port(avoid=()):
    """A TCP port on 127.0.0.1 that the kernel just handed out as free, and
    not one of `avoid`: the kernel may hand the port it just released out
    again, and a node whose HTTP and raft ports were the same failed to
    start (seen in CI: test_duplicate_id_cannot_take_over_a_live_member)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise HarnessError("no free port on %s apart from %s after 100 tries" % (HOST, list(avoid)))


def port_is_free(port):
    """True when nothing listens on 127.0.0.1:port (TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
        return True


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

# No proxy, whatever http_proxy says: tests only talk to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TLS_OPENER = None


def use_tls_client(cafile, certfile=None, keyfile=None):
    """https:// requests from here on trust `cafile` and, when given,
    present certfile/keyfile (mutual TLS); None turns that off again."""
    global _TLS_OPENER
    if cafile is None:
        _TLS_OPENER = None
        return
    ctx = ssl.create_default_context(cafile=cafile)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    _TLS_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                              urllib.request.HTTPSHandler(context=ctx))


class Response:
    """status (int), headers (case-insensitive), body (bytes)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


def http_request(method, url, body=None, headers=None, timeout=HTTP_TIMEOUT):
    """One request; returns a Response for any HTTP status (4xx/5xx too).

    Network failures (refused, timeout) raise OSError/URLError.
    """
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    opener = _TLS_OPENER if url.startswith("https:") and _TLS_OPENER else _OPENER
    try:
        with opener.open(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.headers, e.read())


def raw_request(port, payload, timeout=HTTP_TIMEOUT, max_bytes=1 << 20):
    """Sends raw bytes to 127.0.0.1:port, reads until the peer closes (bounded
    in bytes and by the socket timeout) and returns what came back."""
    out = b""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        deadline = time.monotonic() + timeout
        while len(out) < max_bytes and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
    return out


def parse_raw_response(raw):
    """(status, headers dict with lower-case names, body) from raw HTTP bytes."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0]) if lines else None
    if not m:
        raise AssertionError("not an HTTP response: %r" % raw[:200])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(m.group(1)), headers, body


# ---------------------------------------------------------------------------
# /metrics text
# ---------------------------------------------------------------------------

def metric(text, name):
    """The value of sample `name` (labels included, as /metrics writes them)
    in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def promtool_check(text):
    """Asserts that `promtool check metrics` accepts `text`, when promtool is
    installed; returns whether it ran."""
    promtool = shutil.which("promtool")
    if not promtool:
        return False
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return True


# ---------------------------------------------------------------------------
# Log files
# ---------------------------------------------------------------------------

def tail(path, lines=LOG_TAIL_LINES):
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# One node
# ---------------------------------------------------------------------------

class CkNode:
    """One ckrun process. Ports and data dir are chosen at construction and
    kept across restarts (a restarted node is the same raft member).

    name: used for NODE_ID (unless env overrides it), file names and logs.
    base_dir: a directory owned by the test (tmp_path).
    args: ckrun's arguments ([] = a plain coordination node, or [app.lua]).
    env: extra environment variables (strings); they override the defaults.
    """

    def __init__(self, name, base_dir, args=(), env=None, http_port=None, raft_port=None):
        self.name = name
        self.base_dir = str(base_dir)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.fixed_ports = http_port is not None or raft_port is not None
        self.http_port = http_port or free_port()
        self.raft_port = raft_port or free_port(avoid=(self.http_port,))
        self.data_dir = os.path.join(self.base_dir, name + "-data")
        self.log_path = os.path.join(self.base_dir, name + ".log")
        self.proc = None
        # The binary this node runs: another build's ckrun for upgrade tests.
        self.ckrun = CKRUN
        self.starts = 0
        self.last_exit = None
        self.killed_after_term = False
        # Whether the fixture's teardown insists on a clean exit (code 0).
        self.check_exit = True

    # -- addresses ---------------------------------------------------------

    @property
    def node_id(self):
        return self.extra_env.get("NODE_ID", self.name)

    @property
    def http_addr(self):
        return "%s:%d" % (HOST, self.http_port)

    @property
    def raft_addr(self):
        return "%s:%d" % (HOST, self.raft_port)

    @property
    def url(self):
        scheme = "https" if self.extra_env.get("TLS_CERT") else "http"
        return "%s://%s" % (scheme, self.http_addr)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def env(self):
        e = dict(os.environ)
        # The node must not inherit a cluster configuration from the shell.
        for k in ("JOIN_ADDR", "BOOTSTRAP", "NODE_NAME", "CLUSTER_TOKEN", "ADVERTISE_HTTP",
                  "HASH_ALGORITHM", "HASH_TAGS", "PARTITION_COUNT", "REPLICATION_FACTOR",
                  "CLUSTER_NAME", "SERVICES", "ZONE", "RACK", "WEIGHT"):
            e.pop(k, None)
        e.update({
            "NODE_ID": self.name,
            "HTTP_ADDR": self.http_addr,
            "RAFT_ADDR": self.raft_addr,
            "DATA_DIR": self.data_dir,
            "CK_LOG_LEVEL": "debug",
        })
        e.update({k: str(v) for k, v in self.extra_env.items()})
        return e

    # -- lifecycle ---------------------------------------------------------

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def spawn(self):
        """Starts the process (no waiting). The log file is appended to, so a
        restart's log follows the previous run's."""
        if self.running():
            raise HarnessError("%s: already running (pid %d)" % (self.name, self.pid))
        if not os.path.exists(self.ckrun):
            raise HarnessError("ckrun not found at %s (set CK_BUILD_DIR)" % self.ckrun)
        self.starts += 1
        self.last_exit = None
        self.killed_after_term = False
        with open(self.log_path, "ab") as log:
            log.write(("---- %s start #%d: %s %s (http %s, raft %s)\n" % (
                self.name, self.starts, self.ckrun, " ".join(self.args), self.http_addr,
                self.raft_addr)).encode())
            log.flush()
            self.proc = subprocess.Popen(
                [self.ckrun] + self.args, env=self.env(), cwd=self.base_dir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)  # a terminal ^C reaches pytest, not the node
        _LIVE[self.proc.pid] = self.proc
        return self

    def start(self, wait=True, timeout=READY_TIMEOUT):
        """Spawns and (by default) waits for /ready. When this is the node's
        first start and its ports were picked here, an early exit caused by a
        port taken meanwhile is retried with fresh ports and a fresh data dir."""
        first = self.starts == 0
        for attempt in range(START_ATTEMPTS):
            self.spawn()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except HarnessError:
                if not (first and not self.fixed_ports and self._port_clash()):
                    raise
            # A port clash on a first start: fresh ports, fresh data dir (the
            # failed start may have bootstrapped raft with the old address).
            with open(self.log_path, "ab") as log:
                log.write(b"---- port clash, retrying with fresh ports\n")
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.http_port = free_port()
            self.raft_port = free_port(avoid=(self.http_port,))
        raise HarnessError("%s: could not start after %d attempts\n%s" % (
            self.name, START_ATTEMPTS, self.log_tail()))

    def _port_clash(self):
        if self.running():
            return False
        if _BIND_FAILURE.search(tail(self.log_path, 20)):
            return True
        # The raft side does not always name the cause in the log: check
        # whether someone else holds one of our ports now.
        return not port_is_free(self.http_port) or not port_is_free(self.raft_port)

    def wait_ready(self, timeout=READY_TIMEOUT, poll=READY_POLL):
        """Polls GET /ready until 200, at most `timeout` seconds and a bounded
        number of polls; raises HarnessError (with the log tail) when the
        process exits or the node never gets ready."""
        deadline = time.monotonic() + timeout
        max_polls = int(timeout / poll) + 1
        last = None
        for _ in range(max_polls):
            if self.proc.poll() is not None:
                self.last_exit = self.proc.returncode
                raise HarnessError("%s: ckrun exited with %d before it was ready\n%s" % (
                    self.name, self.proc.returncode, self.log_tail()))
            try:
                # A short timeout per poll, so that an exit is noticed soon
                # even when something else accepts on our port.
                r = self.get("/ready", timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                if r.status == 200 and self._answer_is_mine(r):
                    return r.json()
                last = r
            except OSError as e:  # refused while starting, or a timeout
                last = e
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
        raise HarnessError("%s: not ready after %.1fs (last answer: %r)\n%s" % (
            self.name, timeout, last, self.log_tail()))

    def _answer_is_mine(self, ready):
        """Whether a 200 from /ready came from this process, not from another
        node that holds our HTTP port (then ours is exiting with EADDRINUSE)."""
        try:
            if ready.json().get("node_id") != self.node_id:
                return False
            d = self.get("/health/detailed", timeout=1.0)
            me = d.json().get("me") if d.status == 200 else None
            if isinstance(me, dict) and me.get("raft_addr") != self.raft_addr:
                return False
        except (ValueError, OSError):
            return False
        return self.proc.poll() is None

    def wait_exit(self, timeout):
        """Waits for the process to exit; its code, or None on timeout."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        _LIVE.pop(self.proc.pid, None)
        self.last_exit = code
        return code

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code
        (negative for a signal). killed_after_term tells whether SIGKILL was
        needed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            code = self.wait_exit(timeout)
            if code is not None:
                return code
            self.killed_after_term = True
        return self.kill9()

    def kill9(self):
        """SIGKILL by PID and reap. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = self.wait_exit(KILL_TIMEOUT)
        if code is None:
            raise HarnessError("%s: pid %d survived SIGKILL for %ss" % (
                self.name, self.proc.pid, KILL_TIMEOUT))
        return code

    def restart(self, wait=True, timeout=READY_TIMEOUT):
        """Stops (if running) and starts again with the same ports and data."""
        if self.running():
            self.stop()
        return self.start(wait=wait, timeout=timeout)

    # -- HTTP --------------------------------------------------------------

    def get(self, path, headers=None, timeout=HTTP_TIMEOUT):
        return http_request("GET", self.url + path, headers=headers, timeout=timeout)

    def post(self, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        return http_request("POST", self.url + path, body=body if body is not None else b"",
                            headers=headers, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        return http_request(method, self.url + path, body=body, headers=headers, timeout=timeout)

    def get_json(self, path, status=200):
        """GET path, assert the status and a JSON content type, return the body."""
        r = self.get(path)
        assert r.status == status, "%s %s: %r" % (self.name, path, r)
        assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
        return r.json()

    # -- files -------------------------------------------------------------

    def log_tail(self, lines=LOG_TAIL_LINES):
        return "---- log tail of %s (%s) ----\n%s" % (self.name, self.log_path, tail(self.log_path, lines))

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


# ---------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------

class CkFactory:
    """Makes nodes under one test's tmp_path and remembers them all."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.nodes = []

    def node(self, name="node-1", args=(), env=None, start=True, **kw):
        """A node (started and ready unless start=False)."""
        n = CkNode(name, self.tmp_path, args=args, env=env, **kw)
        self.nodes.append(n)
        if start:
            n.start()
        return n

    def app(self, name, source, env=None, start=True, **kw):
        """A node running a Lua app written to tmp_path/<name>.lua."""
        path = os.path.join(str(self.tmp_path), name + ".lua")
        with open(path, "w") as f:
            f.write(source)
        return self.node(name, args=[path], env=env, start=start, **kw)

    def run(self, *args, timeout=30, env=None):
        """Runs `ckrun args...` to completion (killed after `timeout`
        seconds); returns subprocess.CompletedProcess with text output."""
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([CKRUN] + list(args), env=e, cwd=str(self.tmp_path),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def lua(self, code, timeout=30):
        """Runs `ckrun -e code`; asserts exit 0 and returns stdout."""
        r = self.run("-e", code, timeout=timeout)
        assert r.returncode == 0, "ckrun -e failed (%d): %s" % (r.returncode, r.stderr)
        return r.stdout

    def teardown(self, check=True):
        """Kills every node still running: SIGTERM first (so a node gets the
        chance to exit cleanly), SIGKILL as the fallback. With `check`, a node
        that then exits non-zero (a crash or a sanitizer report at shutdown)
        or needs SIGKILL is an error, unless it was made with check_exit=False."""
        errors = []
        for n in self.nodes:
            if not n.running():
                continue
            try:
                code = n.stop(timeout=5)
            except Exception as e:  # keep killing the others
                errors.append("%s: %s" % (n.name, e))
                continue
            if check and n.check_exit and (code != 0 or n.killed_after_term):
                errors.append("%s: exit code %s after SIGTERM%s\n%s" % (
                    n.name, code, " (needed SIGKILL)" if n.killed_after_term else "", n.log_tail()))
        if errors:
            raise HarnessError("teardown: " + "\n".join(errors))

    def log_tails(self):
        return "\n".join(n.log_tail() for n in self.nodes if n.starts)


def _report(request, text):
    """Writes text straight to the terminal (captured output of a passing
    teardown is never shown)."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        for line in text.splitlines():
            tr.write_line(line)
    else:
        sys.__stderr__.write(text + "\n")


@pytest.fixture
def ck(request, tmp_path):
    """A CkFactory; every process it started is gone after the test."""
    failed_before = request.session.testsfailed
    f = CkFactory(tmp_path)
    try:
        yield f
    finally:
        failed = request.session.testsfailed > failed_before
        try:
            # After a failed test only make sure everything is gone: the
            # failure is what matters.
            f.teardown(check=not failed)
        finally:
            if failed and f.nodes:
                _report(request, "==== %s: node logs ====\n%s" % (request.node.nodeid, f.log_tails()))
