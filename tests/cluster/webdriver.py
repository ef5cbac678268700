"""A small W3C WebDriver client for browser tests: Debian's chromedriver
driving Debian's headless chromium, spoken to with urllib (no selenium).

``Browser.start(tmp_dir)`` runs chromedriver on a free 127.0.0.1 port in a
process group of its own and opens a session; ``close()`` ends the session
and stops that group by its id (chromedriver and the chromium processes it
started), also when the test failed. Every wait is bounded in count and time.

Only the handful of commands the tests use are here: navigate, run a script,
resize the window, take a screenshot.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

from ckharness import HOST, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
START_TIMEOUT = 30.0     # seconds for chromedriver to answer /status
COMMAND_TIMEOUT = 60.0   # seconds for one WebDriver command
POLL = 0.05


def available():
    """None when a browser test can run here, else the reason it cannot."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return "%s is not installed (Debian: apt-get install chromium chromium-driver)" % path
    return None


class WebDriverError(AssertionError):
    pass


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Browser:
    def __init__(self, proc, base, session, log_path):
        self.proc, self.base, self.session, self.log_path = proc, base, session, log_path

    @classmethod
    def start(cls, tmp_dir, width=1280, height=1400):
        port = free_port()
        log_path = os.path.join(tmp_dir, "chromedriver.log")
        log = open(log_path, "wb")
        # Its own session: close() stops chromedriver and the browsers it
        # started as one process group, by that group's id.
        proc = subprocess.Popen([CHROMEDRIVER, "--port=%d" % port, "--log-path=" + log_path],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        base = "http://%s:%d" % (HOST, port)
        b = cls(proc, base, None, log_path)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            for _ in range(int(START_TIMEOUT / POLL) + 1):
                if proc.poll() is not None:
                    raise WebDriverError("chromedriver exited with %s; see %s" % (proc.returncode, log_path))
                try:
                    if b._call("GET", "/status", timeout=2)["ready"]:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise WebDriverError("chromedriver did not answer within %.0fs" % START_TIMEOUT)
                time.sleep(POLL)
            args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--window-size=%d,%d" % (width, height),
                    "--user-data-dir=" + os.path.join(tmp_dir, "chromium-profile")]
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}}
            b.session = b._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            b.close()
            raise
        return b

    def _call(self, method, path, body=None, timeout=COMMAND_TIMEOUT):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _NO_PROXY.open(req, timeout=timeout) as r:
                out = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                v = json.loads(e.read()).get("value", {})
            except ValueError:
                v = {}
            raise WebDriverError("%s %s: %s: %s" % (method, path, v.get("error"), v.get("message"))) from None
        return out.get("value")

    def _s(self, method, path, body=None):
        return self._call(method, "/session/%s%s" % (self.session, path), body)

    def get(self, url):
        self._s("POST", "/url", {"url": url})

    def run(self, script, *args):
        """Runs script (a function body; `arguments` are args) in the page."""
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script, timeout, what, *args):
        """Runs script until it returns something truthy; returns that value.
        Bounded by timeout seconds and by a count."""
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(int(timeout / POLL) + 1):
            last = self.run(script, *args)
            if last:
                return last
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        raise WebDriverError("gave up after %.1fs waiting for %s (last: %r)" % (timeout, what, last))

    def resize(self, width, height):
        self._s("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path):
        png = base64.b64decode(self._s("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return path

    def console_errors(self):
        """The page's console errors so far (chromedriver's goog:loggingPrefs
        is not needed: the page's own onerror hook collects them)."""
        return self.run("return window.__ckErrors || [];")

    def close(self):
        if self.session:
            try:
                self._call("DELETE", "/session/" + self.session, timeout=10)
            except (OSError, WebDriverError):
                pass
            self.session = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # The group may outlive its leader (a browser child still exiting).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
