#!/usr/bin/env python3
"""The smart client's push latency: how soon clusterkit.client (a non-member
that follows the cluster through blocking queries) has a new table.

Starts a 3-node clusterkit cluster (real ckrun processes on free 127.0.0.1
ports, kv_bench's harness), then runs tests/bench/client_push.lua under ckrun:
a client watching a follower while changes are committed through the leader.
Prints p50/p99/max from just before the change is sent, and from when the
leader's answer arrived (the client often has the table first: then ~0).
Asserts nothing about speed. The Go library's smart client polls every 30 s.

    CK_BUILD_DIR=build python3 tests/bench/client_bench.py      (ROUNDS=200)
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kv_bench  # noqa: E402  (its cluster harness: free ports, PID stops, cleanup)

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client_push.lua")


def main():
    if not os.access(kv_bench.CKRUN, os.X_OK):
        print("ckrun not found at %s (set CK_BUILD_DIR)" % kv_bench.CKRUN, file=sys.stderr)
        return 2
    rounds = int(os.environ.get("ROUNDS", "200"))
    c = kv_bench.CkCluster(3)
    try:
        c.start()
        env = dict(os.environ, CK_ADDR="%s:%d" % (kv_bench.HOST, c.follower.http_port),
                   LEADER="%s:%d" % (kv_bench.HOST, c.leader.http_port), ROUNDS=str(rounds))
        r = subprocess.run([kv_bench.CKRUN, SCRIPT], env=env, capture_output=True, text=True,
                           timeout=60 + rounds * 10)
        if r.returncode != 0:
            print("client_push.lua failed (%d):\n%s" % (r.returncode, r.stderr[-2000:]), file=sys.stderr)
            return 1
        j = json.loads(r.stdout.strip().splitlines()[-1])
        print("smart client (clusterkit.client) watching a follower, %d changes committed through the leader:"
              % j["rounds"])
        print("  change sent -> client has the table: p50 %.2f ms  p99 %.2f ms  max %.2f ms"
              % (j["send_p50"], j["send_p99"], j["send_max"]))
        print("  leader's answer -> client has it:    p50 %.2f ms  p99 %.2f ms  max %.2f ms"
              % (j["answer_p50"], j["answer_p99"], j["answer_max"]))
        print("  tables installed %d, watch errors %d (the Go library's client polls every 30 s)"
              % (j["tables"], j["watch_errors"]))
        return 0
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
