"""The web dashboard (/ui) in a real headless browser (Debian's chromium
driven by chromedriver, see webdriver.py) against real ckrun processes: the
page shows every node and every partition as the API reports them, hover and
key lookup work, it follows a kill live (no reload), and with a READ_TOKEN it
asks for the token (Basic) and then works. Screenshots (desktop and phone
width) are kept under <build>/artifacts/ for people to look at.

Run: cd tests/cluster && CK_BUILD_DIR=../../build CK_SOURCE_DIR=../.. pytest -q -p no:cacheprovider test_dashboard.py
"""

import base64
import os

import pytest

from ckharness import BUILD_DIR, ck  # noqa: F401  (the fixture)
from ckcluster import Cluster, leader_of, node_statuses, partitions_of, probe, wait_for
import webdriver

P = 16
LOAD_TIMEOUT = 20.0   # bound for the page's first render
# The bar for "live": the page shows a change within a second of the
# node serving it having it. Blocking queries make this milliseconds; the
# bound is generous for a loaded CI machine and is where the test gives up.
LIVE_BOUND = 1.0
ARTIFACTS = os.path.join(BUILD_DIR, "artifacts")

ROWS = "return Array.from(document.querySelectorAll('#nodes tbody tr'))" \
       ".map(r => [r.dataset.node, r.dataset.status, r.querySelector('.role').textContent," \
       " !!r.querySelector('.leader-mark')]);"
CELLS = "return Array.from(document.querySelectorAll('#grid .cell'))" \
        ".map(c => [c.dataset.partition, c.dataset.primary]);"


@pytest.fixture
def browser(tmp_path):
    why = webdriver.available()
    if why and os.environ.get("CK_SKIP_BROWSER") == "1":
        pytest.skip(why)
    assert why is None, why + " (or set CK_SKIP_BROWSER=1 to skip the browser tests)"
    b = webdriver.Browser.start(str(tmp_path))
    try:
        yield b
    finally:
        b.close()


def shot(b, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = b.screenshot(os.path.join(ARTIFACTS, name))
    print("screenshot:", path)
    return path


def page_matches_api(b, node):
    """The page's nodes and partition map equal what node's API says."""
    rows = {r[0]: r for r in b.run(ROWS)}
    statuses = node_statuses(node)
    if not statuses or set(rows) != set(statuses):
        return False
    if any(rows[i][1] != s for i, s in statuses.items()):
        return False
    cells = dict(b.run(CELLS))
    parts = partitions_of(node) or []
    return len(cells) == P and all(cells.get(p["id"]) == p["primary_node"] for p in parts)


def test_the_page_shows_the_cluster_and_follows_a_kill(ck, browser):
    c = Cluster(ck, env={"PARTITION_COUNT": str(P), "REPLICATION_FACTOR": "2"})
    c.start(3)
    c.wait_converged(members=True)
    leader = c.leader()
    watcher, victim = c.followers()

    browser.get(watcher.url + "/ui")
    browser.wait("return document.querySelectorAll('#grid .cell').length === %d"
                 " && document.querySelectorAll('#nodes tbody tr').length === 3" % P,
                 LOAD_TIMEOUT, "the first render")
    wait_for(lambda: page_matches_api(browser, watcher), what="the page to match /nodes and /partitions")

    # Leader, roles, raft figures (polled once a second).
    rows = browser.wait("const r = %s return r.every(x => x[2] === 'voter') && r;" % ROWS[len("return "):],
                        LOAD_TIMEOUT, "raft roles")
    assert [r[0] for r in rows if r[3]] == [leader.node_id], rows
    term = probe(watcher, "/consensus/stats")["term"]
    assert browser.wait("return document.getElementById('sum-term').textContent", LOAD_TIMEOUT,
                        "the term") == str(term)
    assert browser.run("return document.getElementById('served-by').textContent") == watcher.node_id

    # Hover a cell: its replicas, as /partitions has them.
    parts = {p["id"]: p for p in partitions_of(watcher)}
    detail = browser.run("const c = document.querySelector('#grid .cell[data-partition=\"partition-3\"]');"
                         "c.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));"
                         "return [document.getElementById('cell-detail').textContent, c.title];")
    for r in parts["partition-3"]["replica_nodes"]:
        assert r in detail[0] and r in detail[1], detail

    # Key lookup, compared with the API's answer.
    want = watcher.get_json("/partitions/key?key=user%3A42")["partition_id"]
    browser.run("document.getElementById('lookup-key').value = 'user:42';"
                "document.getElementById('lookup').requestSubmit();")
    got = browser.wait("return document.getElementById('lookup-result').dataset.partition", LOAD_TIMEOUT,
                       "the lookup answer")
    assert got == want
    assert browser.run("return document.querySelector('#grid .cell.found').dataset.partition") == want

    shot(browser, "dashboard.png")
    browser.resize(390, 1500)
    assert browser.run("return document.documentElement.scrollWidth <= window.innerWidth + 1"), \
        "the page scrolls sideways at phone width"
    shot(browser, "dashboard-phone.png")
    browser.resize(1280, 1400)

    # Kill a node: the page follows without a reload.
    browser.run("window.__ckSamePage = true;")
    victim.kill9()
    wait_for(lambda: (node_statuses(watcher) or {}).get(victim.node_id, "active") != "active",
             what="the watcher to mark %s" % victim.node_id)
    browser.wait("const r = document.querySelector('#nodes tr[data-node=\"%s\"]');"
                 "return r && r.dataset.status !== 'active';" % victim.node_id,
                 LIVE_BOUND, "the page to show %s not active" % victim.node_id)
    assert browser.run("return window.__ckSamePage === true"), "the page reloaded"
    browser.wait("return Array.from(document.querySelectorAll('#events li'))"
                 ".some(li => li.textContent.includes('%s: active →'));" % victim.node_id,
                 LIVE_BOUND, "an event for the status change")
    # Then the table is re-homed and the page shows the survivors' map.
    wait_for(lambda: all(p["primary_node"] != victim.node_id for p in partitions_of(watcher) or [{}]),
             what="primaries to leave %s" % victim.node_id)
    wait_for(lambda: page_matches_api(browser, watcher), what="the page to match the new table")
    assert browser.run("return document.querySelectorAll('#grid .cell[data-primary=\"%s\"]').length"
                       % victim.node_id) == 0
    # The last lookup follows the table too.
    owner = watcher.get_json("/partitions/key?key=user%3A42")["primary"]
    browser.wait("return document.getElementById('lookup-result').dataset.primary === arguments[0]",
                 LOAD_TIMEOUT, "the lookup to show the new primary %s" % owner, owner)
    assert browser.console_errors() == []
    shot(browser, "dashboard-after-kill.png")
    assert leader_of(watcher) == leader.node_id


TOKEN = "ui-read-secret"


def basic(password, user="ck"):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def test_a_read_token_protects_the_page_and_the_browser_asks_for_it(ck, browser):
    n = Cluster(ck, env={"READ_TOKEN": TOKEN, "PARTITION_COUNT": "8"}).add()

    r = n.get("/ui")
    assert r.status == 401, r
    assert r.headers["WWW-Authenticate"].startswith("Basic "), r.headers
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    assert n.get("/ui/app.js").status == 401
    assert n.get("/ui", headers={"Authorization": basic("wrong")}).status == 401
    assert n.get("/ui", headers={"Authorization": "Basic !!!"}).status == 401
    assert n.get("/cluster").status == 401
    for auth in (basic(TOKEN), basic(TOKEN, user=""), "Bearer " + TOKEN):
        assert n.get("/ui", headers={"Authorization": auth}).status == 200, auth
        assert n.get("/cluster", headers={"Authorization": auth}).status == 200, auth

    # What a browser does after its prompt: the credentials in the URL stand
    # for the typed ones, and the page's own requests carry them.
    browser.get("http://ck:%s@%s/ui" % (TOKEN, n.http_addr))
    browser.wait("return document.querySelectorAll('#nodes tbody tr').length === 1"
                 " && document.querySelectorAll('#grid .cell').length === 8"
                 " && document.getElementById('live').textContent === 'live'",
                 LOAD_TIMEOUT, "the protected page to render")
    assert browser.console_errors() == []


def test_assets_are_cached_by_etag_and_carry_a_content_security_policy(ck):
    n = Cluster(ck, env={"PARTITION_COUNT": "8"}).add()
    types = {"/ui": "text/html", "/ui/": "text/html", "/ui/index.html": "text/html",
             "/ui/app.js": "text/javascript", "/ui/app.css": "text/css"}
    for path, kind in types.items():
        r = n.get(path)
        assert r.status == 200, (path, r)
        assert r.headers["Content-Type"].startswith(kind), (path, r.headers)
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        etag = r.headers["ETag"]
        again = n.get(path, headers={"If-None-Match": "W/" + etag})
        assert again.status == 304 and again.body == b"", (path, again)
        head = n.request("HEAD", path)
        assert head.status == 200 and head.body == b"" and head.headers["ETag"] == etag
    # Every file the page names is served (no CDN, nothing missing).
    page = n.get("/ui").text
    for ref in ("/ui/app.js", "/ui/app.css"):
        assert ref in page
    assert "http://" not in page and "https://" not in page
    r = n.get("/ui/missing.js")
    assert r.status == 404 and r.json()["error"]["code"] == "NOT_FOUND", r
    conf = n.get_json("/consensus/configuration")
    assert [(s["node_id"], s["role"]) for s in conf["servers"]] == [(n.node_id, "voter")], conf
