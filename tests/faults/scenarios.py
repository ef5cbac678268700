"""The fault scenarios. Each is a function(h, rounds, seconds) that injects
faults into a running cluster (Harness h) for at most `rounds` rounds and
about `seconds` seconds, healing and waiting for convergence after each
round. Sleeping is only ever a fault's duration; every wait for something
to happen is a bounded wait on a condition.

SCENARIOS maps a name to (function, nodes, options).
"""

import os
import threading
import time

import workloads
from nodes import wait_for


def rounds(h, max_rounds, seconds):
    """Round numbers 1.. until `max_rounds` or `seconds` are used up."""
    deadline = time.monotonic() + seconds
    for i in range(1, max_rounds + 1):
        if time.monotonic() >= deadline or h.broken:
            return
        h.rounds = i
        h.event("round", None, n=i)
        yield i


def others(h, n):
    return [m for m in h.members() if m is not n]


def hold(h, lo, hi):
    d = h.rng.uniform(lo, hi)
    h.event("hold", None, seconds=round(d, 2))
    time.sleep(d)


def need_leader(h, what):
    ld = h.leader(timeout=15)
    if ld is None:
        h.violation("no-leader", "%s: no agreed leader within 15s" % what)
    return ld


def split(h, side_a, side_b):
    for a in side_a:
        for b in side_b:
            h.topo.cut(a.slot, b.slot)
    h.event("split", None, a=[n.node_id for n in side_a], b=[n.node_id for n in side_b])


def wait_new_leader(h, old, what):
    """A leader other than `old` among the live members (bounded)."""
    def look():
        ld = h.any_leader(timeout=0.5)
        return ld if ld is not None and ld is not old else None
    ld = wait_for(look, 15, poll=0.05)
    if ld is None:
        h.violation("no-failover", "%s: no new leader within 15s" % what)
    return ld


# ---------------------------------------------------------------------------
# partitions
# ---------------------------------------------------------------------------

def leader_isolation(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "leader isolation")
        if ld is None:
            return
        d = h.disturb([ld.node_id], "isolated")
        split(h, [ld], others(h, ld))
        hold(h, 1.5, 4.0)
        h.topo.heal()
        h.undisturb(d)
        h.event("heal", None)
        h.settle("leader isolation round %d" % r)


def _minority_split(h, max_rounds, seconds, with_leader):
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "split")
        if ld is None:
            return
        ms = h.members()
        k = (len(ms) - 1) // 2
        rest = [m for m in ms if m is not ld]
        if with_leader:
            minority = [ld] + h.rng.sample(rest, k - 1)
        else:
            minority = h.rng.sample(rest, k)
        majority = [m for m in ms if m not in minority]
        d = h.disturb([m.node_id for m in minority], "minority side")
        split(h, minority, majority)
        hold(h, 2.0, 5.0)
        h.topo.heal()
        h.undisturb(d)
        h.event("heal", None)
        h.settle("split round %d" % r)


def minority_split(h, max_rounds, seconds):
    _minority_split(h, max_rounds, seconds, with_leader=False)


def leader_minority_split(h, max_rounds, seconds):
    _minority_split(h, max_rounds, seconds, with_leader=True)


def one_way(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "one-way")
        if ld is None:
            return
        f = h.rng.choice(others(h, ld))
        src, dst = (ld, f) if h.rng.random() < 0.5 else (f, ld)
        d = h.disturb([src.node_id, dst.node_id], "one-way drop")
        h.topo.one_way(src.slot, dst.slot)
        h.event("one-way", None, src=src.node_id, dst=dst.node_id)
        hold(h, 2.0, 4.0)
        h.topo.heal()
        h.undisturb(d)
        h.event("heal", None)
        h.settle("one-way round %d" % r)


def flapping(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ms = h.members()
        d = h.disturb([m.node_id for m in ms], "flapping")
        end = time.monotonic() + h.rng.uniform(4.0, 8.0)
        for _ in range(100):
            if time.monotonic() >= end:
                break
            h.topo.heal()
            k = h.rng.randint(1, (len(ms) - 1) // 2)
            minority = h.rng.sample(ms, k)
            split(h, minority, [m for m in ms if m not in minority])
            hold(h, 0.2, 1.0)
            if h.rng.random() < 0.3:
                h.topo.heal()
                hold(h, 0.1, 0.5)
        h.topo.heal()
        h.undisturb(d)
        h.event("heal", None)
        h.settle("flapping round %d" % r)


# ---------------------------------------------------------------------------
# kills
# ---------------------------------------------------------------------------

def _kill_and_restart(h, victim, what, wipe=False):
    d = h.disturb([victim.node_id], "killed")
    was_leader = h.any_leader(timeout=0.5) is victim
    victim.kill9()
    if was_leader:
        wait_new_leader(h, victim, what)
    # Half the time back before it is marked down (DOWN_AFTER 1.5 s), half
    # the time after its primaries moved.
    if h.rng.random() < 0.5:
        hold(h, 0.0, 0.8)
    else:
        hold(h, 2.0, 4.0)
    h.restart(victim, wipe=wipe)
    if not h.wait_ready([victim], timeout=30):
        h.violation("no-restart", "%s: %s not ready 30s after its restart" % (what, victim.node_id))
    h.undisturb(d)
    h.settle(what)


def kill_leader(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "kill leader")
        if ld is None:
            return
        _kill_and_restart(h, ld, "kill -9 leader round %d" % r)


def kill_random(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        _kill_and_restart(h, h.rng.choice(h.members()), "kill -9 random round %d" % r)


def wipe_rejoin(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        _kill_and_restart(h, h.rng.choice(h.members()), "wipe and rejoin round %d" % r, wipe=True)


def kill_during_membership(h, max_rounds, seconds):
    """Round kinds in turn: a join with the leader killed during it, a
    leave with a random node killed during it, a rebalance with a node
    killed during it."""
    for r in rounds(h, max_rounds, seconds):
        kind = ("join", "leave", "rebalance")[(r - 1) % 3]
        ld = need_leader(h, kind)
        if ld is None:
            return
        if kind == "join" or not [m for m in h.members() if m.node_id.startswith("j")]:
            if len(h.free_slots) == 0:
                continue
            n = h.add_node(node_id="j%d" % r)
            time.sleep(h.rng.uniform(0.0, 0.4))    # the fault's timing: into the join
            _kill_and_restart(h, ld, "kill leader during join round %d" % r)
            if not h.wait_ready([n], timeout=30):
                h.violation("no-join", "join round %d: %s never got ready" % (r, n.node_id))
        elif kind == "leave":
            n = [m for m in h.members() if m.node_id.startswith("j")][0]
            n.expect_exit = True
            n.left = True
            victim = h.rng.choice([m for m in h.members()])
            h.event("leave", n.node_id)
            t = threading.Thread(target=h.leader_post, args=("/leave", {"id": n.node_id}), daemon=True)
            t.start()
            time.sleep(h.rng.uniform(0.0, 0.3))
            _kill_and_restart(h, victim, "kill during leave round %d" % r)
            t.join(timeout=10)
            gone = wait_for(lambda: _absent(h, n.node_id), 20, poll=0.2)
            if not gone:
                # Ask again (the first request may have died with the leader).
                h.leader_post("/leave", {"id": n.node_id})
                gone = wait_for(lambda: _absent(h, n.node_id), 20, poll=0.2)
            if not gone:
                h.violation("no-leave", "leave round %d: %s still listed 40s after POST /leave" % (r, n.node_id))
            _handed_over(h, "leave round %d" % r)
            n.stop(timeout=5)
            h.settle("leave round %d" % r)
        else:
            victim = h.rng.choice(h.members())
            h.event("rebalance", None)
            t = threading.Thread(target=h.leader_post, args=("/rebalance",), daemon=True)
            t.start()
            time.sleep(h.rng.uniform(0.0, 0.2))
            _kill_and_restart(h, victim, "kill during rebalance round %d" % r)
            t.join(timeout=10)


def _handed_over(h, what):
    """An operator stops a node that left only once the remaining members
    hold its data: every member's KV store is ready (its copies are done)."""
    if not wait_for(lambda: all(m.ready() for m in h.members()), 30, poll=0.2):
        h.violation("no-handover", "%s: the remaining members' copies not done 30s after the leave" % what)


def _absent(h, node_id):
    for m in h.members():
        c = m.get("/cluster")
        if not c or any(x["id"] == node_id for x in c["cluster"]["nodes"]):
            return False
    return True


# ---------------------------------------------------------------------------
# pauses
# ---------------------------------------------------------------------------

def _pause(h, victim, lo, hi, what):
    d = h.disturb([victim.node_id], "paused")
    victim.pause()
    hold(h, lo, hi)
    victim.resume()
    h.undisturb(d)
    h.settle(what)


def pause_leader(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "pause leader")
        if ld is None:
            return
        _pause(h, ld, 1.0, 10.0, "SIGSTOP leader round %d" % r)


def pause_follower(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "pause follower")
        if ld is None:
            return
        _pause(h, h.rng.choice(others(h, ld)), 1.0, 10.0, "SIGSTOP follower round %d" % r)


# ---------------------------------------------------------------------------
# disks, ids, storms, combinations
# ---------------------------------------------------------------------------

def disk_full(h, max_rounds, seconds):
    """The last node's data dir is a small tmpfs (see prepare_disk_full);
    each round fills it, makes raft write (a node is killed, so its status
    changes are committed), then frees the space."""
    full = h.members()[-1]
    full.may_exit = True      # a node may stop on ENOSPC, as long as it does not crash
    filler = os.path.join(h.full_mount, "filler")
    for r in rounds(h, max_rounds, seconds):
        h.event("fill", full.node_id)
        # A node that cannot write its log is out of service: it may be
        # marked down, and it stops itself (ckrun exits 4) once a write has
        # hung or failed; restarted, it recovers from what it stored.
        dfull = h.disturb([full.node_id], "disk full")
        _fill(filler)
        victim = h.rng.choice(others(h, full))
        d = h.disturb([victim.node_id], "killed")
        victim.kill9()
        hold(h, 2.0, 4.0)
        h.restart(victim)
        h.wait_ready([victim], timeout=30)
        h.undisturb(d)
        hold(h, 0.5, 2.0)
        os.unlink(filler)
        h.event("unfill", full.node_id)
        # Wait (bounded) until the full node caught up or stopped itself.
        deadline = time.monotonic() + 20
        while full.running() and time.monotonic() < deadline and not h.converged()[0]:
            time.sleep(0.1)
        if not full.running():
            h.restart(full)
        h.settle("disk full round %d" % r)
        h.undisturb(dfull)


def prepare_disk_full(h):
    slot = h.free_slots[h.initial - 1]
    h.full_mount = h.mount_tmpfs(os.path.join(h.dir, "tmpfs-s%d" % slot), size="16m")
    h.data_dir_for[slot] = os.path.join(h.full_mount, "data")


def _fill(path):
    chunk = b"\0" * (1 << 16)
    with open(path, "wb") as f:
        for _ in range(1 << 14):
            try:
                f.write(chunk)
                f.flush()
            except OSError:
                break
    # what is left (smaller than a chunk)
    try:
        with open(path, "ab") as f:
            for _ in range(1 << 16):
                f.write(b"\0")
                f.flush()
    except OSError:
        pass


def duplicate_id(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        if not h.free_slots:
            return
        orig = h.rng.choice(h.members())
        dup = h.add_node(node_id=orig.node_id, start=False)
        dup.left = True          # never a member the cluster should keep
        dup.may_exit = True      # refusing to run as a duplicate is fine
        dup.env["JOIN_ADDR"] = h.rng.choice(others(h, orig)).http_addr
        dup.env.pop("BOOTSTRAP", None)
        dup.spawn()
        h.event("duplicate", orig.node_id, slot=dup.slot)
        hold(h, 3.0, 6.0)
        dup.expect_exit = True
        dup.kill9()
        h.free_slots.append(dup.slot)
        h.settle("duplicate id round %d" % r)


def join_storm(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        k = min(4, len(h.free_slots))
        new = [h.add_node(node_id="s%d-%d" % (r, i), start=False) for i in range(k)]
        for n in new:
            n.env["JOIN_ADDR"] = h.rng.choice([m for m in h.members() if m not in new]).http_addr
        h.event("join-storm", None, nodes=[n.node_id for n in new])
        for n in new:
            n.spawn()
        if not h.wait_ready(new, timeout=45):
            h.violation("no-join", "join storm round %d: not all of %s ready in 45s" % (
                r, [n.node_id for n in new]))
        h.settle("join storm round %d" % r)
        # and a leave storm
        for n in new:
            n.left = True
            n.expect_exit = True
        h.event("leave-storm", None, nodes=[n.node_id for n in new])
        for n in new:
            h.leader_post("/leave", {"id": n.node_id})
        for n in new:
            if not wait_for(lambda n=n: _absent(h, n.node_id), 30, poll=0.2):
                h.violation("no-leave", "leave storm round %d: %s still listed 30s after POST /leave" % (
                    r, n.node_id))
        _handed_over(h, "leave storm round %d" % r)
        for n in new:
            n.stop(timeout=5)
            h.free_slots.append(n.slot)
        h.settle("leave storm round %d" % r)


def partition_plus_kill(h, max_rounds, seconds):
    for r in rounds(h, max_rounds, seconds):
        ms = h.members()
        minority = h.rng.sample(ms, (len(ms) - 1) // 2)
        majority = [m for m in ms if m not in minority]
        victim = h.rng.choice(majority)
        d = h.disturb([m.node_id for m in minority] + [victim.node_id], "split + kill")
        split(h, minority, majority)
        hold(h, 0.5, 1.5)
        victim.kill9()
        hold(h, 1.0, 3.0)
        h.restart(victim)
        hold(h, 0.5, 1.5)
        h.topo.heal()
        h.event("heal", None)
        h.wait_ready([victim], timeout=30)
        h.undisturb(d)
        h.settle("partition + kill round %d" % r)


def pause_plus_split(h, max_rounds, seconds):
    """The leader is paused while a follower is cut off, then both heal."""
    for r in rounds(h, max_rounds, seconds):
        ld = need_leader(h, "pause + split")
        if ld is None:
            return
        f = h.rng.choice(others(h, ld))
        d = h.disturb([ld.node_id, f.node_id], "pause + split")
        split(h, [f], others(h, f))
        ld.pause()
        hold(h, 2.0, 6.0)
        h.topo.heal()
        hold(h, 0.0, 1.0)
        ld.resume()
        h.undisturb(d)
        h.event("heal", None)
        h.settle("pause + split round %d" % r)


# ---------------------------------------------------------------------------
# the coordination API
# ---------------------------------------------------------------------------

def pause_lock_holder(h, max_rounds, seconds):
    """The pinned lock client (workloads.py) sends its session and lock
    traffic through one node; once it holds the lock, that node is
    SIGSTOPped past the session TTL. Its keep-alives hang, its session ends,
    another client gets the lock and uses the resource; then the node
    resumes and the pinned client uses the resource with its old token (the
    resource must refuse it). The paused node is a follower or the leader."""
    co = h.coord
    for r in rounds(h, max_rounds, seconds):
        victim = h.rng.choice(h.members())
        co.pin_node = victim
        co.pin_release.clear()
        co.pin_holding.clear()
        co.pin_want.set()
        h.event("pin", victim.node_id)
        if not wait_for(co.pin_holding.is_set, 20, poll=0.05):
            co.pin_want.clear()
            h.violation("no-lock", "round %d: the client pinned to %s did not get lock %s within 20s" % (
                r, victim.node_id, workloads.LOCK_NAME))
            return
        co.pin_want.clear()
        token = co.pin_token
        d = h.disturb([victim.node_id], "paused")
        victim.pause()
        hold(h, workloads.LOCK_TTL + 0.5, workloads.LOCK_TTL + 2.0)
        # Until another holder has used the resource (its session ended, the
        # lock went to a waiter), bounded.
        if not wait_for(lambda: co.resource.newest > token, 15, poll=0.05):
            h.violation("no-lock-failover", "round %d: %s paused, but in 15s nobody used the resource with a "
                        "token newer than its client's %d" % (r, victim.node_id, token))
        victim.resume()
        h.undisturb(d)
        co.pin_release.set()
        h.settle("SIGSTOP of the lock holder's node round %d" % r)


# Splits are judged by node counts: every node is a voter there, so that
# the bigger side is the raft majority (with the default VOTERS=3 a 2-node
# side can hold two of the three voters).
ALL_VOTE = {"VOTERS": "5"}

# name: (function, nodes, prepare, env)
SCENARIOS = {
    "leader-isolation": (leader_isolation, 3, None, None),
    "minority-split": (minority_split, 5, None, ALL_VOTE),
    "leader-minority-split": (leader_minority_split, 5, None, ALL_VOTE),
    "one-way": (one_way, 3, None, None),
    "flapping": (flapping, 5, None, ALL_VOTE),
    "kill-leader": (kill_leader, 3, None, None),
    "kill-random": (kill_random, 5, None, None),
    "kill-membership": (kill_during_membership, 3, None, None),
    "pause-leader": (pause_leader, 3, None, None),
    "pause-follower": (pause_follower, 3, None, None),
    "disk-full": (disk_full, 3, prepare_disk_full, None),
    "wipe-rejoin": (wipe_rejoin, 3, None, None),
    "duplicate-id": (duplicate_id, 3, None, None),
    "join-storm": (join_storm, 3, None, None),
    "partition-plus-kill": (partition_plus_kill, 5, None, ALL_VOTE),
    "pause-plus-split": (pause_plus_split, 3, None, None),
    "pause-lock-holder": (pause_lock_holder, 3, None, None),
}

# The /v1 workloads (workloads.py) each scenario runs beside the KV clients.
WORKLOADS = {
    "leader-isolation": workloads.ALL,
    "leader-minority-split": workloads.ALL,
    "kill-leader": workloads.ALL,
    "pause-leader": workloads.ALL,
    "partition-plus-kill": workloads.ALL,
    "pause-plus-split": workloads.ALL,
    "pause-lock-holder": ("locks", "leases"),
}
