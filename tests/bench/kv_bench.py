#!/usr/bin/env python3
"""KV benchmark: clusterkit's replicated KV store beside etcd, in the same run.

Starts a 3-node clusterkit cluster (real ckrun processes) and, when `etcd` is
installed (Debian's etcd-server), a 3-member etcd cluster, one after the
other on free 127.0.0.1 ports from temporary directories, and prints one
table of figures for both. It asserts nothing about speed: the figures depend
on the machine, its load and its disk (both stores fsync their logs to the
same temp directory's filesystem, printed in the header).

    CK_BUILD_DIR=build python3 tests/bench/kv_bench.py

Environment: DURATION (seconds per load run, default 7), WATCH_ROUNDS (200),
VALUE_SIZE (bytes per value, 64), ETCD (the etcd binary, default `etcd` on
PATH; ETCD=none skips it), CK_BENCH_KEEP=1 (keep logs and data dirs).

What is measured, the same way for both (etcd through its v3 JSON gateway:
/v3/kv/put, /v3/kv/range, /v3/kv/txn, /v3/watch, base64 keys and values):

* put, stale get, linearizable get and compare-and-swap, driven by wrk with a
  generated Lua script (keep-alive HTTP/1.1 connections, one outstanding
  request each; wrk is far faster than a Python client): req/s and p50/p99 of
  wrk's per-request latency. Load goes to the leader, except "put via
  follower" (clusterkit forwards the write to the leader over HTTP; etcd
  forwards it over gRPC). Puts cycle over 1000 keys per wrk thread; gets read
  1000 keys written beforehand. CAS: one wrk thread per client, each CASing
  its own key in a loop with the index its last write returned (a 409 / an
  unsucceeded txn is counted as a conflict and the key is re-read).
* the client's ceiling: wrk against clusterkit's GET /health on the leader
  (the smallest handler), so that a req/s near it reads as "the client or
  HTTP is the limit", not the store.
* watch notification latency: a watcher on a follower (clusterkit: long-poll
  GET /v1/watch on one keep-alive connection; etcd: one /v3/watch stream) and
  sequential puts on the leader, WATCH_ROUNDS rounds; from just before the put
  is sent until the watcher has parsed the event, in Python threads. Then the
  same with the watcher on the leader, which separates replication to the
  follower from the watch path itself.

ELECTION_TIMEOUT 0.3 s / HEARTBEAT_TIMEOUT 0.05 s for clusterkit (its
defaults), --election-timeout=300 --heartbeat-interval=50 for etcd. Every
process started is stopped by PID and every temp dir removed on exit,
whatever happens (try/finally and atexit); every wait and loop is bounded.
"""

import atexit
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
WAIT_LIMIT = 60.0      # give up on any wait after this long (a bound, not an expectation)
HTTP_TIMEOUT = 5.0
CK_API = "/v1"         # clusterkit's KV routes: /v1/kv/<key>, /v1/watch


def _seconds(v, default):
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$", v or "")
    return float(m.group(1)) if m else default


DURATION = _seconds(os.environ.get("DURATION"), 7.0)
WATCH_ROUNDS = max(1, int(os.environ.get("WATCH_ROUNDS") or 200))
VALUE_SIZE = max(1, int(os.environ.get("VALUE_SIZE") or 64))
KEEP = bool(os.environ.get("CK_BENCH_KEEP"))
GET_KEYS = 1000        # keys written before the get runs
PUT_KEYS = 1000        # keys each wrk thread cycles over in the put runs

SOURCE_DIR = os.environ.get("CK_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_DIR = os.path.abspath(os.environ.get("CK_BUILD_DIR") or os.path.join(SOURCE_DIR, "build"))
CKRUN = os.path.join(BUILD_DIR, "ckrun")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdpeer  # noqa: E402

ETCD = etcdpeer.ETCD

_PROCS = {}    # pid -> Popen, for cleanup
_DIRS = []     # temp dirs, for cleanup


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
    while _DIRS:
        d = _DIRS.pop()
        if KEEP:
            print("  logs kept in %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


class BenchError(RuntimeError):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def request(port, method, path, body=None, timeout=HTTP_TIMEOUT, headers=None):
    """(status, decoded JSON or None) on a new connection, or (None, None)
    when nothing answers."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, None
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        c.close()


def wait_until(pred, what, limit=WAIT_LIMIT, poll=0.05):
    """Polls pred() until truthy and returns its value; bounded in time and
    in count."""
    t0 = time.monotonic()
    for _ in range(int(limit / poll) + 1):
        v = pred()
        if v:
            return v
        if time.monotonic() - t0 > limit:
            break
        time.sleep(poll)
    raise BenchError("gave up after %.0fs waiting for %s" % (limit, what))


class Proc:
    """One server process, its log in the cluster's temp dir."""

    def __init__(self, base, name):
        self.name = name
        self.base = base
        self.log_path = os.path.join(base, name + ".log")
        self.proc = None

    def spawn(self, argv, env):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        _PROCS[self.proc.pid] = self.proc

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

    def stop(self, limit=15):
        """SIGTERM, a bounded wait, then SIGKILL."""
        p = self.proc
        if p is None or p.pid not in _PROCS:
            return
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        _PROCS.pop(p.pid, None)


def new_base(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    _DIRS.append(d)
    return d


def remove_base(d):
    if d in _DIRS:
        _DIRS.remove(d)
    if KEEP:
        print("  logs kept in %s" % d)
    else:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# The two clusters
# ---------------------------------------------------------------------------

class CkCluster:
    system = "clusterkit"

    def __init__(self, size=3):
        self.base = new_base("ck-kv-bench-")
        self.nodes = []
        for i in range(1, size + 1):
            n = Proc(self.base, "n%d" % i)
            n.http_port, n.raft_port = free_port(), free_port()
            self.nodes.append(n)

    def env(self, n):
        e = dict(os.environ)
        for k in ("JOIN_ADDR", "BOOTSTRAP", "NODE_NAME", "CLUSTER_TOKEN", "READ_TOKEN", "ADVERTISE_HTTP",
                  "PARTITION_COUNT", "REPLICATION_FACTOR", "VOTERS", "ELECTION_TIMEOUT",
                  "HEARTBEAT_TIMEOUT", "HEARTBEAT_INTERVAL", "SUSPECT_AFTER", "DOWN_AFTER",
                  "KV_MAX_VALUE", "KV_MAX_BYTES"):
            e.pop(k, None)
        e.update({"NODE_ID": n.name, "HTTP_ADDR": "%s:%d" % (HOST, n.http_port),
                  "RAFT_ADDR": "%s:%d" % (HOST, n.raft_port),
                  "DATA_DIR": os.path.join(self.base, n.name + "-data"), "CK_LOG_LEVEL": "warn",
                  "ELECTION_TIMEOUT": "0.3", "HEARTBEAT_TIMEOUT": "0.05"})
        if n is self.nodes[0]:
            e["BOOTSTRAP"] = "true"
        else:
            e["JOIN_ADDR"] = "%s:%d" % (HOST, self.nodes[0].http_port)
        return e

    def leader_id(self, n):
        st, j = request(n.http_port, "GET", "/consensus/leader", timeout=0.5)
        return (j or {}).get("leader_id") if st == 200 else None

    def start(self):
        for n in self.nodes:
            n.spawn([CKRUN], self.env(n))
        ids = {n.name for n in self.nodes}

        def formed():
            for n in self.nodes:
                n.check_alive()
            if not all(request(n.http_port, "GET", "/ready", timeout=0.5)[0] == 200 for n in self.nodes):
                return None
            seen = {self.leader_id(n) for n in self.nodes}
            return seen.pop() if len(seen) == 1 and seen <= ids else None
        lid = wait_until(formed, "clusterkit formation")
        self.leader = next(n for n in self.nodes if n.name == lid)
        self.follower = next(n for n in self.nodes if n is not self.leader)
        # A write through a follower, so that forwarding works before load starts.
        last = [None]

        def first_write():
            st, j = last[0] = request(self.follower.http_port, "PUT", CK_API + "/kv/bench/hello", body=b"x")
            if st == 404:  # No such route: an older or newer HTTP API than this bench knows.
                raise BenchError("clusterkit: PUT %s/kv/... answered 404 %s" % (CK_API, j))
            return st == 200
        try:
            wait_until(first_write, "a first write through a follower")
        except BenchError as e:
            raise BenchError("%s (last answer %s)" % (e, last[0]))

    def prefill(self, keys, value):
        for i in range(0, len(keys), 100):
            ops = [{"type": "put", "key": k, "value": value} for k in keys[i:i + 100]]
            st, j = request(self.leader.http_port, "POST", CK_API + "/kv", body=json.dumps({"ops": ops}),
                            headers={"Content-Type": "application/json"}, timeout=30)
            if st != 200:
                raise BenchError("clusterkit prefill: POST /v1/kv answered %s %s" % (st, j))

    def stop(self):
        for n in self.nodes:
            n.stop()
        remove_base(self.base)


class EtcdCluster:
    system = "etcd"

    def __init__(self, size=3):
        self.base = new_base("etcd-kv-bench-")
        self.nodes = []
        for i in range(1, size + 1):
            n = Proc(self.base, "e%d" % i)
            n.http_port, n.peer_port = free_port(), free_port()
            self.nodes.append(n)

    def argv(self, n):
        return etcdpeer.argv(n.name, os.path.join(self.base, n.name + "-data"), n.http_port, n.peer_port,
                             [(m.name, m.peer_port) for m in self.nodes], "ck-kv-bench")

    def status(self, n):
        return etcdpeer.status(n.http_port)

    def start(self):
        for n in self.nodes:
            n.spawn(self.argv(n), etcdpeer.env())

        def formed():
            for n in self.nodes:
                n.check_alive()
            sts = [self.status(n) for n in self.nodes]
            if not all(sts) or not all((request(n.http_port, "GET", "/health", timeout=0.5)[1] or {})
                                       .get("health") == "true" for n in self.nodes):
                return None
            leaders = {s[1] for s in sts}
            if len(leaders) != 1 or not leaders <= {s[0] for s in sts}:
                return None
            return next(n for n, s in zip(self.nodes, sts) if s[0] == s[1])
        self.leader = wait_until(formed, "etcd formation")
        self.follower = next(n for n in self.nodes if n is not self.leader)
        wait_until(lambda: request(self.follower.http_port, "POST", "/v3/kv/put",
                                   body=json.dumps({"key": b64("bench/hello"), "value": b64("x")}))[0] == 200,
                   "a first write through a follower")

    def prefill(self, keys, value):
        for i in range(0, len(keys), 100):
            ops = [{"request_put": {"key": b64(k), "value": b64(value)}} for k in keys[i:i + 100]]
            st, j = request(self.leader.http_port, "POST", "/v3/kv/txn", body=json.dumps({"success": ops}),
                            timeout=30)
            if st != 200:
                raise BenchError("etcd prefill: /v3/kv/txn answered %s %s" % (st, j))

    def stop(self):
        for n in self.nodes:
            n.stop()
        remove_base(self.base)


# ---------------------------------------------------------------------------
# Load with wrk
# ---------------------------------------------------------------------------

# The wrk script, with a CFG table prepended per run. Every request is built
# in init() where it can be (wrk then only sends); CAS builds its next request
# from the last response, so it runs with one connection per wrk thread.
WRK_LUA = r"""
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {math.floor(n / 262144) % 64, math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64}
    out[#out + 1] = B64:sub(q[1] + 1, q[1] + 1) .. B64:sub(q[2] + 1, q[2] + 1) ..
      (b and B64:sub(q[3] + 1, q[3] + 1) or "=") .. (c and B64:sub(q[4] + 1, q[4] + 1) or "=")
  end
  return table.concat(out)
end

local JSON = {["Content-Type"] = "application/json"}
local VALUE = string.rep("v", CFG.value_size)
local VALUE64 = b64(VALUE)

local threads = {}
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local function build(key)
  local etcd, op = CFG.system == "etcd", CFG.op
  if op == "put" then
    if etcd then
      return wrk.format("POST", "/v3/kv/put", JSON, '{"key":"' .. b64(key) .. '","value":"' .. VALUE64 .. '"}')
    end
    return wrk.format("PUT", CFG.api .. "/kv/" .. key, nil, VALUE)
  elseif op == "get" or op == "lin" then
    if etcd then
      local ser = op == "get" and ',"serializable":true' or ""
      return wrk.format("POST", "/v3/kv/range", JSON, '{"key":"' .. b64(key) .. '"' .. ser .. '}')
    end
    return wrk.format("GET", CFG.api .. "/kv/" .. key .. (op == "lin" and "?consistent=1" or ""))
  else -- "health"
    return wrk.format("GET", "/health")
  end
end

local reqs, idx
local ok, bad, conflicts = 0, 0, 0
local cas_key, cas_index, reread

function init(args)
  reqs, idx = {}, 0
  if CFG.op == "cas" then
    cas_key, cas_index, reread = CFG.prefix .. tid, 0, false
    return
  end
  for i = 1, CFG.keys do
    local key
    if CFG.op == "put" then
      key = CFG.prefix .. tid .. "-" .. i
    else -- Each thread starts at its own place in the shared key set.
      key = CFG.prefix .. ((i + tid * 397) % CFG.keys)
    end
    reqs[i] = build(key)
  end
end

local function cas_request()
  local etcd = CFG.system == "etcd"
  if reread then
    if etcd then
      return wrk.format("POST", "/v3/kv/range", JSON, '{"key":"' .. b64(cas_key) .. '"}')
    end
    return wrk.format("GET", CFG.api .. "/kv/" .. cas_key)
  end
  if etcd then
    local k = b64(cas_key)
    return wrk.format("POST", "/v3/kv/txn", JSON,
      '{"compare":[{"target":"MOD","result":"EQUAL","key":"' .. k .. '","mod_revision":"' .. cas_index ..
      '"}],"success":[{"request_put":{"key":"' .. k .. '","value":"' .. VALUE64 .. '"}}]}')
  end
  return wrk.format("PUT", CFG.api .. "/kv/" .. cas_key .. "?cas=" .. cas_index, nil, VALUE)
end

function request()
  if CFG.op == "cas" then return cas_request() end
  idx = idx + 1
  if idx > #reqs then idx = 1 end
  return reqs[idx]
end

local function cas_response(status, body)
  local etcd = CFG.system == "etcd"
  if reread then
    local n = etcd and body:match('"mod_revision":"(%d+)"') or (not etcd and body:match('"mod_index":(%d+)'))
    if status == 200 and n then
      cas_index, reread = tonumber(n), false
    elseif status == 404 or (etcd and status == 200) then
      cas_index, reread = 0, false -- Absent.
    else
      bad = bad + 1
    end
    return
  end
  if etcd then
    if status == 200 and body:find('"succeeded":true', 1, true) then
      ok = ok + 1
      cas_index = tonumber(body:match('"revision":"(%d+)"'))
    elseif status == 200 then
      conflicts, reread = conflicts + 1, true
    else
      bad, reread = bad + 1, true
    end
  else
    if status == 200 then
      ok = ok + 1
      cas_index = tonumber(body:match('"index":(%d+)'))
    elseif status == 409 then
      conflicts, reread = conflicts + 1, true
    else
      bad, reread = bad + 1, true
    end
  end
  if not cas_index then cas_index, reread, bad = 0, true, bad + 1 end
end

function response(status, headers, body)
  if CFG.op == "cas" then
    cas_response(status, body)
  elseif status == 200 then
    ok = ok + 1
  else
    bad = bad + 1
  end
  wrk.thread:set("ok", ok)
  wrk.thread:set("bad", bad)
  wrk.thread:set("conflicts", conflicts)
end

function done(summary, latency, requests)
  local s = {ok = 0, bad = 0, conflicts = 0}
  for _, t in ipairs(threads) do
    for k in pairs(s) do s[k] = s[k] + (tonumber(t:get(k)) or 0) end
  end
  local e = summary.errors
  io.write(string.format('CKBENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"ok":%d,"bad":%d,"conflicts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, s.ok, s.bad, s.conflicts))
end
"""


def lua_string(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


_run_no = [0]


def run_wrk(cluster, port, op, clients, prefix, duration=None, threads=None):
    """One wrk run; returns the figures its done() printed, as a dict."""
    duration = DURATION if duration is None else duration
    _run_no[0] += 1
    if op == "cas":
        threads = clients        # One connection per thread: see WRK_LUA.
        prefix = "%s%d/" % (prefix, _run_no[0])
    threads = threads or min(2, clients)
    script = os.path.join(cluster.base, "wrk-%d.lua" % _run_no[0])
    with open(script, "w") as f:
        f.write("CFG = {system = %s, api = %s, op = %s, prefix = %s, keys = %d, value_size = %d}\n" % (
            lua_string(cluster.system), lua_string(CK_API), lua_string(op), lua_string(prefix),
            PUT_KEYS if op == "put" else GET_KEYS, VALUE_SIZE))
        f.write(WRK_LUA)
    argv = ["wrk", "-t%d" % threads, "-c%d" % clients, "-d%ds" % max(1, int(round(duration))), "--timeout", "5s",
            "-s", script, "http://%s:%d" % (HOST, port)]
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError("wrk did not finish: %s" % " ".join(argv))
    for line in out.stdout.splitlines():
        if line.startswith("CKBENCH "):
            r = json.loads(line[len("CKBENCH "):])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            return r
    raise BenchError("wrk printed no figures (%s):\n%s%s" % (" ".join(argv), out.stdout, out.stderr))


# ---------------------------------------------------------------------------
# Watch latency (Python threads)
# ---------------------------------------------------------------------------

class Watcher(threading.Thread):
    """Receives events on one connection and stamps each round's arrival."""

    def __init__(self, cluster, node, prefix):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.node = node
        self.prefix = prefix         # "w1/": keys w1/<round>
        self.arrived = {}            # round -> perf_counter()
        self.cond = threading.Condition()
        self.stop_flag = False
        self.error = None
        self.ready = threading.Event()

    def stamp(self, key):
        t = time.perf_counter()
        m = re.match(r"^%s(\d+)$" % re.escape(self.prefix), key)
        if m:
            with self.cond:
                self.arrived.setdefault(int(m.group(1)), t)
                self.cond.notify_all()

    def wait_round(self, r, limit):
        with self.cond:
            self.cond.wait_for(lambda: r in self.arrived or self.error, timeout=limit)
            return self.arrived.get(r)

    def run(self):
        try:
            self.loop()
        except Exception as e:  # Reported by the main thread.
            if not self.stop_flag:
                self.error = e
            with self.cond:
                self.cond.notify_all()


class CkWatcher(Watcher):
    def loop(self):
        port, key0 = self.node.http_port, "%s/kv/%s0" % (CK_API, self.prefix)
        if request(self.cluster.leader.http_port, "PUT", key0, body=b"x")[0] != 200:
            raise BenchError("clusterkit: PUT %s failed" % key0)
        j = wait_until(lambda: (lambda st, j: j if st == 200 else None)(*request(port, "GET", key0)),
                       "%s on %s" % (key0, self.node.name))
        index = j["index"]
        c = http.client.HTTPConnection(HOST, port, timeout=15)
        self.conn = c
        self.ready.set()
        deadline = time.monotonic() + WATCH_ROUNDS * 5 + 30
        for _ in range(WATCH_ROUNDS * 4 + 100):
            if self.stop_flag or time.monotonic() > deadline:
                break
            c.request("GET", "%s/watch?prefix=%s&index=%d&wait=10s" % (CK_API, self.prefix, index))
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise BenchError("clusterkit: GET /v1/watch answered %d %s" % (r.status, body[:200]))
            j = json.loads(body)
            for ev in j["events"]:
                self.stamp(ev["key"])
            index = j["index"]
        c.close()


class EtcdWatcher(Watcher):
    def loop(self):
        c = http.client.HTTPConnection(HOST, self.node.http_port, timeout=15)
        self.conn = c
        end = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)
        c.request("POST", "/v3/watch", body=json.dumps(
            {"create_request": {"key": b64(self.prefix), "range_end": b64(end)}}))
        r = c.getresponse()
        if r.status != 200:
            raise BenchError("etcd: /v3/watch answered %d" % r.status)
        first = json.loads(r.readline())
        if not first.get("result", {}).get("created"):
            raise BenchError("etcd: /v3/watch did not start: %s" % first)
        self.ready.set()
        deadline = time.monotonic() + WATCH_ROUNDS * 5 + 30
        for _ in range(WATCH_ROUNDS * 4 + 100):
            if self.stop_flag or time.monotonic() > deadline:
                break
            line = r.readline()
            if not line:
                break
            for ev in json.loads(line).get("result", {}).get("events", []):
                self.stamp(base64.b64decode(ev["kv"]["key"]).decode())


def bench_watch(cluster, node, prefix):
    """Puts on the leader, a watcher on node; returns (latencies in seconds,
    missed rounds)."""
    etcd = cluster.system == "etcd"
    w = (EtcdWatcher if etcd else CkWatcher)(cluster, node, prefix)
    w.start()
    if not w.ready.wait(10):
        raise BenchError("%s watcher did not start: %s" % (cluster.system, w.error))
    c = http.client.HTTPConnection(HOST, cluster.leader.http_port, timeout=HTTP_TIMEOUT)
    xs, missed = [], 0
    time.sleep(0.1)  # The first poll or stream is in place.
    try:
        for r in range(1, WATCH_ROUNDS + 1):
            if w.error:
                raise BenchError("%s watcher: %s" % (cluster.system, w.error))
            t0 = time.perf_counter()
            if etcd:
                c.request("POST", "/v3/kv/put", body=json.dumps({"key": b64("%s%d" % (prefix, r)),
                                                                 "value": b64("x")}))
            else:
                c.request("PUT", "%s/kv/%s%d" % (CK_API, prefix, r), body=b"x")
            resp = c.getresponse()
            resp.read()
            if resp.status != 200:
                raise BenchError("%s watch round %d: the put answered %d" % (cluster.system, r, resp.status))
            t1 = w.wait_round(r, 5.0)
            if t1 is None:
                missed += 1
            else:
                xs.append(t1 - t0)
            time.sleep(0.005)  # The watcher is waiting again before the next put.
    finally:
        w.stop_flag = True
        c.close()
        if getattr(w, "conn", None):
            try:
                w.conn.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        w.join(timeout=15)
    return xs, missed


LOCK_ROUNDS = int(os.environ.get("LOCK_ROUNDS", "50"))


def bench_locks(cluster):
    """clusterkit only: uncontended acquire+release on the leader, and the
    handoff to a waiter on another node (release sent -> the waiter's grant
    received). Returns (acquire+release seconds, handoff seconds)."""
    def call(node, method, path, body=None, timeout=HTTP_TIMEOUT):
        st, data = request(node.http_port, method, path, body=json.dumps(body).encode() if body else None,
                           timeout=timeout)
        return st, data if isinstance(data, dict) else {}

    st, s1 = call(cluster.leader, "POST", CK_API + "/sessions", {"ttl": "60s"})
    st2, s2 = call(cluster.follower, "POST", CK_API + "/sessions", {"ttl": "60s"})
    if st != 200 or st2 != 200:
        raise BenchError("sessions: %d %d" % (st, st2))
    s1, s2 = s1["id"], s2["id"]
    solo = []
    for _ in range(LOCK_ROUNDS * 2):
        t0 = time.perf_counter()
        st, _ = call(cluster.leader, "POST", CK_API + "/locks/solo", {"session": s1})
        st2, _ = call(cluster.leader, "DELETE", CK_API + "/locks/solo?session=%d" % s1)
        if st != 200 or st2 != 200:
            raise BenchError("lock/unlock answered %d/%d" % (st, st2))
        solo.append(time.perf_counter() - t0)
    handoff = []
    for r in range(LOCK_ROUNDS):
        st, _ = call(cluster.leader, "POST", CK_API + "/locks/hand", {"session": s1})
        if st != 200:
            raise BenchError("lock answered %d" % st)
        got = {}

        def wait():
            got["st"], got["body"] = call(cluster.follower, "POST", CK_API + "/locks/hand",
                                          {"session": s2, "timeout": "10s"}, timeout=15)
            got["t"] = time.perf_counter()
        w = threading.Thread(target=wait)
        w.start()
        wait_until(lambda: call(cluster.leader, "GET", CK_API + "/locks/hand")[1].get("waiters") == 1,
                   "the waiter to queue")
        t0 = time.perf_counter()
        call(cluster.leader, "DELETE", CK_API + "/locks/hand?session=%d" % s1)
        w.join(15)
        if got.get("st") != 200:
            raise BenchError("handoff round %d: the waiter got %s" % (r, got.get("st")))
        handoff.append(got["t"] - t0)
        call(cluster.follower, "DELETE", CK_API + "/locks/hand?session=%d" % s2)
        wait_until(lambda: call(cluster.leader, "GET", CK_API + "/locks/hand")[0] == 404, "the release")
    return solo, handoff


# ---------------------------------------------------------------------------
# The runs and the table
# ---------------------------------------------------------------------------

ROWS = [
    # (label, op, clients, via follower)
    ("put", "put", 1, False),
    ("put", "put", 16, False),
    ("put", "put", 64, False),
    ("put via follower", "put", 16, True),
    ("stale get", "get", 16, False),
    ("stale get", "get", 64, False),
    ("linearizable get", "lin", 16, False),
    ("linearizable get", "lin", 64, False),
    ("cas (own key)", "cas", 1, False),
    ("cas (own key)", "cas", 16, False),
    ("cas (own key)", "cas", 64, False),
]

HEAD = "%-11s %-18s %7s %10s %8s %8s %8s  %s" % ("system", "operation", "clients", "req/s", "p50_ms",
                                                  "p99_ms", "max_ms", "notes")


def print_row(system, label, clients, r):
    notes = []
    errs = r["connect"] + r["read"] + r["write"] + r["timeout"]
    if errs:
        notes.append("socket errors %d (timeouts %d)" % (errs, r["timeout"]))
    if r["bad"]:
        notes.append("failed %d" % r["bad"])
    if r["conflicts"]:
        notes.append("cas conflicts %d" % r["conflicts"])
    print("%-11s %-18s %7d %10.0f %8.2f %8.2f %8.1f  %s" % (
        system, label, clients, r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000, r["max_us"] / 1000,
        ", ".join(notes)), flush=True)


def bench_system(cluster, results):
    t0 = time.monotonic()
    cluster.start()
    print("# %s: 3 nodes up in %.1f s, leader %s" % (cluster.system, time.monotonic() - t0,
                                                    cluster.leader.name), flush=True)
    value = "v" * VALUE_SIZE
    cluster.prefill(["g/%d" % i for i in range(GET_KEYS)], value)
    # A short warm-up (LuaJIT traces, etcd's Go runtime), not measured.
    run_wrk(cluster, cluster.leader.http_port, "put", 16, "warm/", duration=1.0)
    run_wrk(cluster, cluster.leader.http_port, "get", 16, "g/", duration=1.0)
    if cluster.system == "clusterkit":
        r = run_wrk(cluster, cluster.leader.http_port, "health", 64, "")
        results[("clusterkit", "health", 64)] = r
        print_row("ckrun", "GET /health", 64, r)
    for label, op, clients, via_follower in ROWS:
        node = cluster.follower if via_follower else cluster.leader
        prefix = {"put": "p/", "get": "g/", "lin": "g/", "cas": "c/"}[op]
        r = run_wrk(cluster, node.http_port, op, clients, prefix)
        results[(cluster.system, label, clients)] = r
        print_row(cluster.system, label, clients, r)
        for n in cluster.nodes:
            n.check_alive()
    if cluster.system == "clusterkit":
        solo, handoff = bench_locks(cluster)
        results[("clusterkit", "handoff")] = handoff
        for label, xs in (("lock+unlock", solo), ("lock handoff", handoff)):
            xs_ms = sorted(x * 1000 for x in xs)
            print("%-11s %-18s %7s %10s %8.2f %8.2f %8.1f  %d rounds%s" % (
                "clusterkit", label, "1", "-", statistics.median(xs_ms), pct(xs_ms, 99), xs_ms[-1], len(xs),
                ", holder on the leader, waiter on a follower" if label == "lock handoff" else
                ", on the leader"), flush=True)
    # The watch the targets are about (a watcher on another node than the
    # writes' leader), then the same with the watcher on the leader itself.
    for key, node, label, prefix in (("watch", cluster.follower, "watch notify", "w1/"),
                                     ("watch leader", cluster.leader, "  same, on leader", "w2/")):
        xs, missed = bench_watch(cluster, node, prefix)
        results[(cluster.system, key)] = (xs, missed)
        if xs:
            xs_ms = sorted(x * 1000 for x in xs)
            print("%-11s %-18s %7s %10s %8.2f %8.2f %8.1f  %d rounds, puts on %s, watcher on %s%s" % (
                cluster.system, label, "1", "-", statistics.median(xs_ms), pct(xs_ms, 99), xs_ms[-1],
                len(xs), cluster.leader.name, node.name,
                (", %d missed (none within 5 s)" % missed) if missed else ""), flush=True)
        else:
            print("%-11s %-18s: no event arrived in %d rounds" % (cluster.system, label, missed))


def pct(sorted_xs, p):
    """Nearest-rank percentile of a sorted list."""
    k = max(0, min(len(sorted_xs) - 1, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def compare(results):
    print("# same run, clusterkit / etcd (targets from issue 11: put and linearizable-get req/s >= 2x "
          "etcd's, watch p99 <= 5 ms on loopback)")
    for label, clients in (("put", 1), ("put", 16), ("put", 64), ("put via follower", 16),
                           ("linearizable get", 16), ("linearizable get", 64),
                           ("stale get", 16), ("stale get", 64), ("cas (own key)", 16), ("cas (own key)", 64)):
        a, b = results.get(("clusterkit", label, clients)), results.get(("etcd", label, clients))
        if not a or not b or not b["rps"]:
            continue
        target = "  (target >= 2.0)" if label in ("put", "linearizable get") and clients > 1 else ""
        print("#   %-18s c=%-3d req/s %.2fx, p99 %.2f vs %.2f ms%s" % (
            label, clients, a["rps"] / b["rps"], a["p99_us"] / 1000, b["p99_us"] / 1000, target))
    wa, wb = results.get(("clusterkit", "watch")), results.get(("etcd", "watch"))
    if wa and wa[0]:
        line = "#   watch notify (watcher on a follower) p99 %.2f ms (target <= 5 ms)" % pct(sorted(x * 1000 for x in wa[0]), 99)
        if wb and wb[0]:
            line += ", etcd %.2f ms" % pct(sorted(x * 1000 for x in wb[0]), 99)
        print(line)
    ho = results.get(("clusterkit", "handoff"))
    if ho:
        print("#   lock handoff to a waiting node: median %.2f ms (target <= 10 ms)" %
              statistics.median(x * 1000 for x in ho))


def fs_type(path):
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[-1].split()[1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def main():
    if not os.access(CKRUN, os.X_OK):
        print("ckrun not found at %s (set CK_BUILD_DIR)" % CKRUN, file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("kv_bench: wrk is not installed (Debian package 'wrk'); skipping the KV benchmark")
        return 0
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    etcd_version = etcdpeer.version() if ETCD else None
    print("# clusterkit KV vs etcd: %s, etcd %s, %d CPUs, load average %s, temp dir on %s, "
          "%.0f s per load run, values of %d bytes" % (
              CKRUN, etcd_version or "not installed", os.cpu_count() or 0,
              " ".join("%.2f" % x for x in os.getloadavg()), fs_type(tempfile.gettempdir()), DURATION,
              VALUE_SIZE), flush=True)
    print("# wrk: keep-alive connections, one request in flight each; latency is wrk's per request; "
          "load on the leader unless said", flush=True)
    print(HEAD, flush=True)
    results = {}
    t0 = time.monotonic()
    try:
        c = CkCluster()
        try:
            bench_system(c, results)
        finally:
            c.stop()
        if etcd_version:
            e = EtcdCluster()
            try:
                bench_system(e, results)
            finally:
                e.stop()
        else:
            print("# etcd is not installed (Debian package etcd-server, `make bench-deps`): "
                  "clusterkit measured alone, nothing to compare with")
        if etcd_version:
            compare(results)
        print("# %.0f s in all" % (time.monotonic() - t0))
    except BenchError as e:
        print("bench failed: %s" % e, file=sys.stderr)
        return 1
    finally:
        _cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
