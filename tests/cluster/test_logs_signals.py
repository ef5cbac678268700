"""Logs, signals and ckrun's module path (issue 12, items 3 and 7): JSON log
lines and the access log, refusal of unknown log levels and formats, a plain
luajit process that stops gracefully on SIGINT/SIGTERM through
clusterkit.run{signals = true} and clusterkit.on_signal, and ckrun finding a
module beside its script.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q test_logs_signals.py
"""

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

import ckharness
from ckharness import ck  # noqa: F401  (the fixture)
from ckharness import CkNode, HarnessError, _LIVE
from ckcluster import FAST_ENV, leader_of, node_statuses, wait_for

LUAJIT = os.environ.get("CK_LUAJIT") or shutil.which("luajit")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"debug", "info", "warn", "error"}
EXIT_TIMEOUT = 20.0  # seconds to wait for an exit after a signal (a bound, not an expectation)


# ---------------------------------------------------------------------------
# A plain luajit process as a node
# ---------------------------------------------------------------------------

class LuajitNode(CkNode):
    """A node run by `luajit script.lua` with LUA_PATH/LUA_CPATH pointing at
    the source tree and the build (as CTest does for the Lua tests), instead
    of ckrun. Everything else (ports, env, readiness, stop by PID) is CkNode's."""

    def env(self):
        e = super().env()
        src, build = ckharness.SOURCE_DIR, ckharness.BUILD_DIR
        e["LUA_PATH"] = "%s/lua/?.lua;%s/lua/?/init.lua;;" % (src, src)
        e["LUA_CPATH"] = "%s/?.so;;" % build
        if os.environ.get("CK_PRELOAD"):
            # A sanitizer build: core.so is instrumented, luajit is not.
            e["LD_PRELOAD"] = os.environ["CK_PRELOAD"]
            e["ASAN_OPTIONS"] = "detect_leaks=0"
        return e

    def spawn(self):
        if self.running():
            raise HarnessError("%s: already running" % self.name)
        self.starts += 1
        self.last_exit = None
        with open(self.log_path, "ab") as log:
            log.write(("---- %s start #%d: luajit %s\n" % (self.name, self.starts, " ".join(self.args))).encode())
            log.flush()
            self.proc = subprocess.Popen(
                [LUAJIT] + self.args, env=self.env(), cwd=self.base_dir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        _LIVE[self.proc.pid] = self.proc
        return self


needs_luajit = pytest.mark.skipif(LUAJIT is None, reason="no luajit on PATH (set CK_LUAJIT)")


def luajit_node(ck, name, source, env=None, start=True):
    path = os.path.join(str(ck.tmp_path), name + ".lua")
    with open(path, "w") as f:
        f.write(source)
    n = LuajitNode(name, ck.tmp_path, args=[path], env=env)
    ck.nodes.append(n)
    if start:
        n.start()
    return n


def send(node, sig):
    os.kill(node.pid, sig)


def wait_logged(node, pattern, what):
    wait_for(lambda: re.search(pattern, node.log_text(), re.M), timeout=EXIT_TIMEOUT,
             what="%s in %s's log" % (what, node.name))


# Configured from the environment like any node; the loop runs with the
# graceful-stop handlers. (On the old code run ignored its argument: SIGINT
# was swallowed by a callback, SIGTERM killed the process.)
SERVE = r"""
local clusterkit = require "clusterkit"
local ck = clusterkit.new()
assert(ck:start())
local why = clusterkit.run{signals = true}
io.stderr:write("app: run returned after ", tostring(why), ", node ", ck:state(), "\n")
"""


@needs_luajit
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_plain_luajit_stops_gracefully_on_signal(ck, sig):
    """A plain luajit node under clusterkit.run{signals = true} stops gracefully on SIGINT/SIGTERM and exits 0."""
    n = luajit_node(ck, "plain", SERVE, env={"BOOTSTRAP": "true"})
    send(n, sig)
    assert n.wait_exit(EXIT_TIMEOUT) == 0, n.log_tail()
    log = n.log_text()
    name = signal.Signals(sig).name
    assert re.search(r"\[plain\] stopped$", log, re.M), log
    assert "app: run returned after %s, node stopped" % name in log, log
    assert "interrupted!" not in log, log


@needs_luajit
def test_plain_luajit_sighup_handler_runs_and_node_keeps_serving(ck):
    """clusterkit.on_signal("SIGHUP", fn) calls fn instead of the default action (which would end the process)."""
    src = SERVE.replace('local ck = clusterkit.new()', 'clusterkit.on_signal("SIGHUP", function(name) '
                        'io.stderr:write("app: got ", name, "\\n") end)\nlocal ck = clusterkit.new()')
    assert "SIGHUP" in src
    n = luajit_node(ck, "plain", src, env={"BOOTSTRAP": "true"})
    send(n, signal.SIGHUP)
    wait_logged(n, r"^app: got SIGHUP$", "the SIGHUP handler's line")
    assert n.running()
    assert n.get("/health").status == 200
    send(n, signal.SIGTERM)
    assert n.wait_exit(EXIT_TIMEOUT) == 0, n.log_tail()


@needs_luajit
def test_plain_luajit_leader_hands_over_on_sigterm(ck):
    """SIGTERM to a plain luajit leader of three nodes hands leadership over before it stops: the others keep a leader and mark it stopped."""
    env = dict(FAST_ENV, BOOTSTRAP="true")
    lead = luajit_node(ck, "plain", SERVE, env=env)
    others = [ck.node("n%d" % i, env=dict(FAST_ENV, JOIN_ADDR=lead.http_addr)) for i in (2, 3)]
    everyone = ["n2", "n3", "plain"]  # sorted
    wait_for(lambda: all(node_statuses(o) and sorted(node_statuses(o)) == everyone
                         and set(node_statuses(o).values()) == {"active"} for o in others + [lead]),
             what="three active members")
    wait_for(lambda: leader_of(lead) == "plain", what="the bootstrap node leading")
    send(lead, signal.SIGTERM)
    assert lead.wait_exit(EXIT_TIMEOUT) == 0, lead.log_tail()
    log = lead.log_text()
    assert "leadership handed over to" in log, log
    assert re.search(r"\[plain\] stopped$", log, re.M), log
    new = wait_for(lambda: leader_of(others[0]) in ("n2", "n3") and leader_of(others[0]) == leader_of(others[1])
                   and leader_of(others[0]), what="a new leader both survivors agree on")
    assert new in ("n2", "n3")
    wait_for(lambda: all((node_statuses(o) or {}).get("plain") == "stopped" for o in others),
             what="the stopped node marked stopped")


@needs_luajit
def test_plain_luajit_sigint_while_joining_says_interrupted(ck, tmp_path):
    """Ctrl-C while a plain luajit start() is still joining stops the node and raises "interrupted", not TIMEOUT."""
    src = r"""
local clusterkit = require "clusterkit"
clusterkit.on_signal("SIGINT", clusterkit.stop)
local ck = clusterkit.new()
io.stderr:write("app: joining\n")
local ok, err = ck:start()
io.stderr:write("app: start returned ", tostring(ok), " ", tostring(err), "\n")
"""
    # Nothing listens on the join address: the join retries until stopped.
    dead = ckharness.free_port()
    n = luajit_node(ck, "joiner", src, env={"JOIN_ADDR": "127.0.0.1:%d" % dead, "START_TIMEOUT": "60"},
                    start=False)
    n.check_exit = False  # It exits 1: the interrupted start raised.
    n.spawn()
    wait_logged(n, r"\[joiner t=\d+\] started: ", "the node's start")
    send(n, signal.SIGINT)
    assert n.wait_exit(EXIT_TIMEOUT) not in (None, 0), n.log_tail()
    log = n.log_text()
    assert "interrupted (SIGINT)" in log, log
    assert re.search(r"\[joiner\] stopped$", log, re.M), log
    assert "TIMEOUT" not in log and "start returned" not in log, log


def test_start_stopped_while_joining_returns_interrupted(ck):
    """A start() that stop() ends while it is still joining returns INTERRUPTED, not a TIMEOUT after START_TIMEOUT."""
    dead = ckharness.free_port()
    src = r"""
local clusterkit = require "clusterkit"
local ck = clusterkit.new()
clusterkit.spawn(function()
  local ok, err = ck:start()
  io.stderr:write("app: start returned ", tostring(ok), " ", tostring(err and err.code), "\n")
end)
for _ = 1, 3000 do
  if ck.status ~= "new" then break end -- start() is under way (joining)
  clusterkit.sleep(0.01)
end
ck:stop()
"""
    n = ck.app("joiner", src, env={"JOIN_ADDR": "127.0.0.1:%d" % dead, "START_TIMEOUT": "120"}, start=False)
    n.spawn()
    assert n.wait_exit(EXIT_TIMEOUT) is not None, n.log_tail()
    wait_logged(n, r"^app: start returned nil INTERRUPTED$", "start() returning INTERRUPTED")


def test_ckrun_sigint_while_joining_says_interrupted_and_exits_0(ck):
    """ckrun interrupted while its node is still joining stops it gracefully, says "interrupted" (not TIMEOUT) and exits 0."""
    dead = ckharness.free_port()
    n = ck.node("joiner", env={"JOIN_ADDR": "127.0.0.1:%d" % dead, "START_TIMEOUT": "60"}, start=False)
    n.spawn()
    wait_logged(n, r"\[joiner t=\d+\] started: ", "the node's start")
    send(n, signal.SIGINT)
    assert n.wait_exit(EXIT_TIMEOUT) == 0, n.log_tail()
    log = n.log_text()
    assert "ckrun: interrupted (SIGINT)" in log, log
    assert "TIMEOUT" not in log, log
    assert re.search(r"\[joiner\] stopped$", log, re.M), log


# ---------------------------------------------------------------------------
# Log format, levels, access log
# ---------------------------------------------------------------------------

def test_json_logs_every_line_is_an_object_with_the_fields(ck):
    """LOG_FORMAT=json: every line a node writes is one JSON object with time, level, node, term and msg; the access log adds request fields."""
    n = ck.node("jn", env={"LOG_FORMAT": "json", "ACCESS_LOG": "true"})
    assert n.get("/health").status == 200
    assert n.get("/no-such-thing").status == 404
    assert n.stop() == 0, n.log_tail()
    lines = [l for l in n.log_text().splitlines() if not l.startswith("---- ")]
    assert lines
    objs = []
    for line in lines:
        try:
            o = json.loads(line)
        except ValueError:
            raise AssertionError("not a JSON line: %r\n%s" % (line, n.log_tail()))
        assert isinstance(o, dict), line
        assert ISO_MS.match(o.get("time", "")), line
        assert o.get("level") in LEVELS, line
        assert isinstance(o.get("msg"), str), line
        assert o.get("node", "jn") == "jn", line
        assert "term" not in o or isinstance(o["term"], int), line
        objs.append(o)
    mine = [o for o in objs if o.get("node") == "jn"]
    assert any(o["msg"].startswith("started: ") for o in mine), lines
    assert any(isinstance(o.get("term"), int) and o["term"] >= 1 for o in mine), lines
    assert any(o["msg"] == "stopped" for o in mine), lines
    access = {(o["method"], o["path"]): o for o in mine if o.get("access") is True}
    health, missing = access.get(("GET", "/health")), access.get(("GET", "/no-such-thing"))
    assert health and missing, lines
    assert health["status"] == 200 and missing["status"] == 404
    for o in (health, missing):
        assert isinstance(o["duration_ms"], (int, float)) and o["duration_ms"] >= 0, o
        assert isinstance(o["bytes"], int) and o["bytes"] > 0, o


def test_access_log_text_lines_and_off_by_default(ck):
    """ACCESS_LOG=true writes one text line per request (method, path, status, ms, bytes); without it there is none."""
    on = ck.node("on", env={"ACCESS_LOG": "true", "CK_LOG_LEVEL": "warn"})
    off = ck.node("off")
    for n in (on, off):
        assert n.get("/health").status == 200
    pattern = r"INFO \[on t=\d+\] GET /health 200 \d+\.\d\d ms \d+ bytes$"
    wait_logged(on, pattern, "the access line")
    assert not re.search(r"GET /health 200", off.log_text()), off.log_tail()


@pytest.mark.parametrize("env,named", [
    ({"CK_LOG_LEVEL": "verbose"}, "CK_LOG_LEVEL"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
], ids=["level", "format"])
def test_unknown_log_level_or_format_is_refused_at_start(ck, env, named):
    """ckrun with an unknown CK_LOG_LEVEL or LOG_FORMAT exits non-zero at once, naming the variable and the accepted values."""
    e = {"NODE_ID": "bad", "HTTP_ADDR": "127.0.0.1:%d" % ckharness.free_port(),
         "RAFT_ADDR": "127.0.0.1:%d" % ckharness.free_port(), "BOOTSTRAP": "true",
         "DATA_DIR": str(ck.tmp_path / "bad-data")}
    e.update(env)
    try:
        r = ck.run(env=e, timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("ckrun accepted %r and kept running" % env)
    assert r.returncode != 0, r
    assert named in r.stderr and "must be" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "stack traceback" not in r.stderr, r.stderr


def test_unknown_log_option_values_raise_in_clusterkit_new(ck):
    """clusterkit.new refuses log_level/log_format options it does not know (it used to take any level as info)."""
    out = ck.lua(r"""
local clusterkit = require "clusterkit"
for _, o in ipairs({{log_level = "verbose"}, {log_format = "yaml"}}) do
  local ok, err = pcall(clusterkit.new, o)
  io.write(tostring(ok), " ", tostring(err):match("option %S+ must be [^,]+") or tostring(err), "\n")
end
local ok = pcall(clusterkit.new, {log_level = "WARN", log_format = "TEXT"})
io.write("upper case ", tostring(ok), "\n")
""")
    assert out.splitlines() == ["false option log_level must be debug",
                                "false option log_format must be text or json",
                                "upper case true"], out


# ---------------------------------------------------------------------------
# ckrun's package.path
# ---------------------------------------------------------------------------

def test_ckrun_finds_modules_beside_the_script(ck, tmp_path):
    """ckrun app.lua puts the script's directory on package.path: <dir>/name.lua and <dir>/name/init.lua load from any cwd."""
    app_dir = tmp_path / "app"
    (app_dir / "pkg").mkdir(parents=True)
    (app_dir / "helper.lua").write_text('return {x = "helper"}\n')
    (app_dir / "pkg" / "init.lua").write_text('return {y = "pkg"}\n')
    (app_dir / "main.lua").write_text('io.write(require("helper").x, " ", require("pkg").y, "\\n")\n')
    # ck.run's cwd is tmp_path, so "./?.lua" cannot find app/helper.lua.
    r = ck.run(str(app_dir / "main.lua"), timeout=15)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "helper pkg\n"
    r = ck.run("app/main.lua", timeout=15)  # a relative script path works the same
    assert r.returncode == 0 and r.stdout == "helper pkg\n", r.stderr
