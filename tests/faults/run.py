#!/usr/bin/env python3
"""The fault-injection suite: real ckrun nodes (examples/kv/app.lua) in
network namespaces, faults as iptables rules and signals, a recorder, and
checkers over the whole history. Needs root (namespaces, iptables, tmpfs).

    make test-faults                                   # the CI selection (fixed seeds)
    make test-faults FAULT_SCENARIO=pause-leader FAULT_SEED=1234
    make test-faults FAULT_MINUTES=60                  # randomized, scenarios and seeds drawn at random

Environment (or the same-named options of `make test-faults`):
  CK_BUILD_DIR     where ckrun is (default <repo>/build)
  FAULT_SCENARIO   comma-separated scenario names (default: all); `list` prints them
  FAULT_SEED       the seed (default: each scenario's fixed CI seed); with FAULT_MINUTES, the
                   seed that draws the scenarios and their seeds (each printed as it runs)
  FAULT_MINUTES    run random scenarios with random seeds for this long
  FAULT_SECONDS    fault time per scenario (default 18; 60 with FAULT_MINUTES)
  FAULT_ROUNDS     rounds per scenario at most (default 6; 50 with FAULT_MINUTES)
  FAULT_BUDGET     seconds after which the fixed selection starts no more scenarios (default 540;
                   those count as failed)
  FAULT_TOKEN=0    run the nodes without a cluster token (default: with one)
  FAULT_VERBOSE=1  print every event as it happens
  FAULT_KEEP=1     keep the run's directory (logs, data) even when everything passed

Prints a summary table and, as its last line, `N passed, M failed`; exits 1
when any scenario found a violation (or the harness failed), 0 otherwise.
"""

import atexit
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import checks  # noqa: E402
import netns  # noqa: E402
from harness import Harness, SetupError  # noqa: E402
from scenarios import SCENARIOS, WORKLOADS  # noqa: E402

SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
SLOTS = 8


def ci_seed(name):
    """The fixed seed of a scenario in the CI selection."""
    return zlib.crc32(name.encode()) % 100000


class Run:
    def __init__(self):
        self.source_dir = SOURCE_DIR
        build = os.environ.get("CK_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
        self.ckrun = os.path.join(os.path.abspath(build), "ckrun")
        self.verbose = os.environ.get("FAULT_VERBOSE", "") not in ("", "0")
        self.topo = netns.Topology(SLOTS)
        self.tmp = "/tmp/" + self.topo.tag + "tmp"
        self.mounts = []
        self.harness = None
        self.cleaned = False

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        if self.harness is not None:
            self.harness.kill_everything()
        for mp in reversed(self.mounts):
            netns.sh(["umount", "-l", mp], check=False)
        self.topo.destroy()


def run_one(run, name, seed, seconds, max_rounds):
    fn, count, prepare, env = SCENARIOS[name]
    extra = "" if (seconds, max_rounds) == (18, 6) else " FAULT_SECONDS=%g FAULT_ROUNDS=%d" % (seconds, max_rounds)
    print("==== %s seed=%d (rerun: make test-faults FAULT_SCENARIO=%s FAULT_SEED=%d%s)" % (
        name, seed, name, seed, extra), flush=True)
    run.topo.heal()
    h = Harness(run, name, seed, nodes=count, env=env)
    run.harness = h
    t0 = time.monotonic()
    violations, stopped = [], []
    try:
        if prepare:
            prepare(h)
        h.start_cluster()
        h.start_recording()
        h.start_clients()
        h.start_coord(WORKLOADS.get(name, ()), pinned=(name == "pause-lock-holder"))
        fn(h, max_rounds, seconds)
        h.heal_all()
        h.settle("final heal")
        h.clients_stop.set()
        h.final_reads()
    except SetupError as e:
        violations.append(("harness", "setup failed: %s" % str(e).splitlines()[0]))
        print(str(e)[-3000:])
    except Exception as e:
        violations.append(("harness", "%s: %s" % (type(e).__name__, e)))
        traceback.print_exc()
    finally:
        try:
            stopped = h.stop_all()
        except Exception as e:
            violations.append(("harness", "stop failed: %s" % e))
        h.kill_everything()
        run.topo.heal()
        run.harness = None
    violations += checks.judge(h, stopped)
    try:
        with open(os.path.join(h.dir, "history.json"), "w") as f:
            json.dump({"scenario": name, "seed": seed, "events": h.h.events, "samples": h.h.samples,
                       "ops": h.h.ops, "disturbed": h.h.disturbed, "keepalives": h.h.keepalives,
                       "lockops": h.h.lockops, "grants": h.h.grants, "uses": h.h.uses,
                       "violations": violations}, f, default=str)
    except (OSError, TypeError, ValueError) as e:
        print("  (could not write history.json: %s)" % e)
    ops = len(h.h.ops)
    acked = sum(1 for o in h.h.ops if o["complete"] is not None)
    dt = time.monotonic() - t0
    for kind, text in violations:
        print("  VIOLATION %s: %s" % (kind, text))
    for note in h.h.notes:
        print("  note: %s" % note)
    if WORKLOADS.get(name):
        print("  " + v1_summary(h.h))
    print("  %s: %d rounds, %d ops (%d answered), %d violations, %.1fs" % (
        name, h.rounds, ops, acked, len(violations), dt), flush=True)
    if violations:
        for n in h.nodes:
            if any(n.node_id in t for _, t in violations):
                print("  ---- log tail of %s (%s)\n%s" % (n.node_id, n.log_path, _indent(n.log_tail(15))))
    return {"scenario": name, "seed": seed, "rounds": h.rounds, "ops": ops, "acked": acked,
            "violations": violations, "seconds": dt, "dir": h.dir}


def v1_summary(hh):
    cas = [o for o in hh.ops if o.get("api") == "v1" and o["kind"] == "cas"]
    ok = sum(1 for o in cas if o["complete"] is not None and not o.get("refused"))
    refused = sum(1 for o in cas if o.get("refused"))
    reads = sum(1 for o in hh.ops if o.get("api") == "v1" and o["kind"] == "r")
    stale = sum(1 for u in hh.uses if not u["accepted"])
    ended = len({k["session"] for k in hh.keepalives if k.get("ended")})
    sessions = len({k["session"] for k in hh.keepalives if k["session"] is not None})
    return ("v1: %d reads, %d cas (%d ok, %d refused, %d unknown); %d lock grants, %d uses (%d refused); "
            "%d sessions (%d found ended), %d keep-alives" % (
                reads, len(cas), ok, refused, len(cas) - ok - refused, len(hh.grants), len(hh.uses), stale,
                sessions, ended, sum(1 for k in hh.keepalives if k["kind"] == "renew")))


def _indent(s):
    return "\n".join("    " + x for x in s.splitlines())


def summary(results):
    print()
    print("%-22s %7s %6s %7s %10s %7s  %s" % ("scenario", "seed", "rounds", "ops", "violations", "secs", "found"))
    for r in results:
        kinds = sorted({k for k, _ in r["violations"]})
        print("%-22s %7d %6d %7d %10d %7.1f  %s" % (r["scenario"], r["seed"], r["rounds"], r["ops"],
                                                 len(r["violations"]), r["seconds"], ",".join(kinds) or "-"))


def main():
    names = os.environ.get("FAULT_SCENARIO", "").strip()
    if names == "list":
        print("\n".join(SCENARIOS))
        return 0
    if os.geteuid() != 0:
        print("tests/faults needs root (network namespaces, iptables, tmpfs)")
        return 2
    for tool in ("ip", "iptables", "mount"):
        if not shutil.which(tool):
            print("tests/faults needs %s (make test-faults installs it)" % tool)
            return 2
    selected = [n.strip() for n in names.split(",") if n.strip()] or list(SCENARIOS)
    for n in selected:
        if n not in SCENARIOS:
            print("unknown scenario %r; known: %s" % (n, ", ".join(SCENARIOS)))
            return 2
    minutes = float(os.environ.get("FAULT_MINUTES") or 0)
    seed_env = os.environ.get("FAULT_SEED", "").strip()
    seconds = float(os.environ.get("FAULT_SECONDS") or (60 if minutes else 18))
    max_rounds = int(os.environ.get("FAULT_ROUNDS") or (50 if minutes else 6))

    run = Run()
    if not os.path.exists(run.ckrun):
        print("ckrun not found at %s (set CK_BUILD_DIR or build first)" % run.ckrun)
        return 2
    netns.cleanup_stale()

    def on_signal(sig, frame):
        raise KeyboardInterrupt("signal %d" % sig)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(run.cleanup)
    results = []
    interrupted = False
    try:
        os.makedirs(run.tmp)
        run.topo.create()
        # From here on this process (and every thread it starts) lives in
        # the client namespace: it reaches nodes over the bridge only.
        run.topo.enter_client()
        print("fault suite: namespaces %s*, nodes on %s.0/24, ckrun %s, logs under %s" % (
            run.topo.tag, netns.SUBNET, run.ckrun, run.tmp), flush=True)
        plan = []
        if minutes:
            rng = random.Random(int(seed_env) if seed_env else random.SystemRandom().getrandbits(31))
            end = time.monotonic() + minutes * 60
            for _ in range(10 ** 6):
                if time.monotonic() >= end:
                    break
                name = rng.choice(selected)
                results.append(run_one(run, name, rng.randrange(1, 10 ** 6), seconds, max_rounds))
        else:
            for name in selected:
                plan.append((name, int(seed_env) if seed_env else ci_seed(name)))
            budget = float(os.environ.get("FAULT_BUDGET") or 540)
            started = time.monotonic()
            for name, seed in plan:
                if time.monotonic() - started > budget:
                    # Bounded CI time even when many scenarios hang in their
                    # convergence waits: what is not run counts as failed.
                    print("==== %s seed=%d: not run, the %ds budget is used up" % (name, seed, budget))
                    results.append({"scenario": name, "seed": seed, "rounds": 0, "ops": 0, "acked": 0,
                                    "violations": [("not-run", "time budget used up")], "seconds": 0})
                    continue
                results.append(run_one(run, name, seed, seconds, max_rounds))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cleaning up", flush=True)
    finally:
        run.cleanup()
    summary(results)
    failed = sum(1 for r in results if r["violations"])
    passed = len(results) - failed
    if not failed and not interrupted and os.environ.get("FAULT_KEEP", "") in ("", "0"):
        shutil.rmtree(run.tmp, ignore_errors=True)
    else:
        print("logs and data: %s" % run.tmp)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
