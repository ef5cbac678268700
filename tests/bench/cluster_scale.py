#!/usr/bin/env python3
"""Scale benchmark: real ckrun processes at N = 10, 30, 60 and 100.

Prints, for each N (nothing here asserts a timing):

* formation: from spawning every process at once (n1 bootstraps, the others
  join through it) until every node answers /ready and all report one leader;
* idle CPU over a 10 s window after the cluster settled (utime + stime from
  /proc/<pid>/stat): the whole cluster as a percentage of one core, the mean
  node, the leader, and the commits the idle cluster made meanwhile;
* a crashed standby and a crashed voter marked down: from SIGKILL until the
  leader's /nodes shows it "down";
* failover after kill -9 of the leader (3 rounds): until the surviving voters
  and ten other survivors report one new leader among themselves.

    CK_BUILD_DIR=build python3 tests/bench/cluster_scale.py [--sizes=10,30,60,100]

Timing options are the defaults (ELECTION_TIMEOUT, HEARTBEAT_INTERVAL,
SUSPECT_AFTER, DOWN_AFTER). On a 2-core machine a 100-node cluster is 100
processes sharing two cores with this script's polling; the script polls only
the nodes it needs at each step, so that its own load stays small. Every
process it starts is killed on exit; every wait is bounded.
"""

import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_failover as cf  # noqa: E402

IDLE_SETTLE = 3.0   # seconds after convergence before the idle window
IDLE_WINDOW = 10.0  # the idle window itself (a measurement, not a wait)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime, stime


def stats(n):
    return n.stats() or {}


def form(c):
    """Seconds from spawning all until all are ready and agree on a leader.
    Each poll asks the nodes not yet seen ready, up to the first that is not
    (a probe costs the node it asks: polling all 100 every 20 ms was a
    measurable part of the formation it measured), then, once all are
    ready, the leader agreement."""
    t0 = time.monotonic()
    for n in c.nodes:
        n.spawn()
    pending = list(c.nodes)

    def all_ready():
        for n in c.nodes:
            n.check_alive()
        while pending and pending[0].ready():
            pending.pop(0)
        if pending:
            # The one in front may be slow while later ones are done.
            pending.append(pending.pop(0))
            return False
        return c.agreed_leader(c.nodes)
    cf.wait_until(all_ready, "formation of %d nodes" % len(c.nodes), limit=120, poll=0.02)
    took = time.monotonic() - t0
    cpu = {n.name: cpu_seconds(n.proc.pid) for n in c.nodes}
    return took, sum(cpu.values()), cpu


def settled(c, leader):
    """The leader's /nodes lists every live node active, its raft
    configuration has three voters (VOTERS' default), all of them live (a
    crashed voter is replaced by a standby, then demoted), and every live node
    has applied the leader's state index."""
    live = {n.name for n in c.live()}
    st = leader.statuses() or {}
    if not all(st.get(name) == "active" for name in live):
        return False
    code, conf = cf.get(leader.http_port, "/consensus/configuration")
    if code != 200:
        return False
    voters = [s["node_id"] for s in conf["servers"] if s["role"] == "voter"]
    if len(voters) != min(3, len(live)) or not all(v in live for v in voters):
        return False
    idx = stats(leader).get("state_index")
    return idx is not None and all(stats(n).get("state_index") == idx for n in c.live())


def idle(c, leader):
    time.sleep(IDLE_SETTLE)
    live = c.live()
    i0 = stats(leader).get("commit_index", 0)
    before = {n.name: cpu_seconds(n.proc.pid) for n in live}
    t0 = time.monotonic()
    time.sleep(IDLE_WINDOW)
    dt = time.monotonic() - t0
    used = {n.name: cpu_seconds(n.proc.pid) - before[n.name] for n in live}
    commits = stats(leader).get("commit_index", 0) - i0
    total = sum(used.values()) / dt * 100
    return total, statistics.mean(used.values()) / dt * 100, used[leader.name] / dt * 100, commits


def roles(c):
    return {n.name: stats(n).get("role") for n in c.live()}


def mark_down(c, leader, victim):
    t0 = time.monotonic()
    victim.signal(signal.SIGKILL)
    cf.wait_until(lambda: (leader.statuses() or {}).get(victim.name) == "down",
                  "%s down" % victim.name, poll=0.02)
    dt = time.monotonic() - t0
    victim.reap()
    return dt


def failover(c, rounds):
    xs = []
    for r in range(rounds):
        old = c.by_id(c.agreed_leader(c.live()))
        role = roles(c)
        voters = [n for n in c.live() if role.get(n.name) == "voter" and n is not old]
        others = [n for n in c.live() if n is not old and n not in voters][:10]
        watch = voters + others
        t0 = time.monotonic()
        old.signal(signal.SIGKILL)
        try:
            cf.wait_until(lambda: c.agreed_leader(watch), "a new leader (round %d)" % (r + 1), poll=0.01)
        except cf.BenchError:
            print("  killed %s; watched: %s" % (old.name, ", ".join(
                "%s %s leader=%s" % (n.name, role.get(n.name), n.leader()) for n in watch)), file=sys.stderr)
            raise
        xs.append(time.monotonic() - t0)
        old.reap()
        new = c.by_id(c.agreed_leader(watch))
        cf.wait_until(lambda: settled(c, new), "settled after failover round %d" % (r + 1), limit=120, poll=0.2)
    return xs


def bench(size):
    c = cf.Cluster(size)
    try:
        t_form, form_cpu, cpu = form(c)
        leader = c.by_id(c.agreed_leader(c.nodes))
        form_lead = cpu[leader.name]
        cf.wait_until(lambda: settled(c, leader), "%d nodes settled" % size, limit=120, poll=0.2)
        total, mean, lead, commits = idle(c, leader)
        role = roles(c)
        standby = next((n for n in c.live() if role.get(n.name) in ("standby", "spare")), None)
        voter = next(n for n in c.live() if role.get(n.name) == "voter" and n is not leader)
        t_standby = mark_down(c, leader, standby) if standby else None
        t_voter = mark_down(c, leader, voter)
        cf.wait_until(lambda: settled(c, leader), "settled after the crashes", limit=120, poll=0.2)
        fo = failover(c, 3)
        print("N=%-3d formation %6.2f s (CPU: nodes %.2f s, leader %.2f s) | idle CPU: cluster %5.1f%% of a core, "
              "node %.2f%%, leader %.2f%%, %d commits in %.0f s | down: %s %s, voter %s | failover median %s max %s" % (
                  size, t_form, form_cpu, form_lead, total, mean, lead, commits, IDLE_WINDOW,
                  role.get(standby.name) if standby else "standby", cf.ms(t_standby) if standby else "-",
                  cf.ms(t_voter), cf.ms(statistics.median(fo)), cf.ms(max(fo))), flush=True)
    finally:
        c.close()


def main(argv):
    sizes = next((a.split("=", 1)[1] for a in argv if a.startswith("--sizes=")), "10,30,60,100")
    try:
        sizes = [int(s) for s in sizes.split(",")]
    except ValueError:
        print("--sizes takes a comma-separated list of node counts, e.g. --sizes=10,30", file=sys.stderr)
        return 2
    if not os.access(cf.CKRUN, os.X_OK):
        print("ckrun not found at %s (set CK_BUILD_DIR)" % cf.CKRUN, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, cf._on_signal)
    signal.signal(signal.SIGINT, cf._on_signal)
    print("clusterkit scale benchmark: %s, %d CPUs, default timing options" % (cf.CKRUN, os.cpu_count() or 0),
          flush=True)
    try:
        for n in sizes:
            bench(n)
    except cf.BenchError as e:
        print("bench failed: %s" % e, file=sys.stderr)
        return 1
    finally:
        cf._cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
