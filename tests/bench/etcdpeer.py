"""etcd as the peer in the benchmarks: one member's command line and its
view of the leader, shared by kv_bench.py and cluster_failover.py so that
both run etcd the same way (Debian's etcd-server, 3 members on loopback,
--election-timeout 300 --heartbeat-interval 50, clusterkit's defaults)."""

import http.client
import json
import os
import shutil

HOST = "127.0.0.1"
ETCD = os.environ.get("ETCD") or shutil.which("etcd")
if ETCD == "none":
    ETCD = None
ELECTION_MS, HEARTBEAT_MS = 300, 50


def argv(name, data_dir, client_port, peer_port, members, token):
    """members: [(name, peer_port)] of the whole cluster."""
    initial = ",".join("%s=http://%s:%d" % (m, HOST, p) for m, p in members)
    client = "http://%s:%d" % (HOST, client_port)
    peer = "http://%s:%d" % (HOST, peer_port)
    return [ETCD, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            "--election-timeout", str(ELECTION_MS), "--heartbeat-interval", str(HEARTBEAT_MS),
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]


def env():
    """The environment without ETCD_* settings that would override argv."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def status(port, timeout=0.5):
    """(member id, leader id) as this member reports them, or None."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("POST", "/v3/maintenance/status", body="{}")
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            return None
        h = json.loads(data).get("header", {})
        leader = json.loads(data).get("leader")
        return (h.get("member_id"), leader) if h.get("member_id") and leader else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        c.close()


def version():
    import subprocess
    try:
        out = subprocess.run([ETCD, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split("\n")[0].replace("etcd Version: ", "")
    except (OSError, subprocess.SubprocessError):
        return None
