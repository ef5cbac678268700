"""Network namespaces for the fault suite.

One run makes (names carry a per-run prefix `ckfault-<pid>-<rand>-`):

* `<prefix>br`: a namespace holding only a bridge `br0`;
* `<prefix>n1` .. `<prefix>nK`: one namespace per node slot, each with
  `eth0` (a veth whose peer `v<i>` is a port of the bridge) at 10.201.0.(10+i)/24;
* `<prefix>cl`: the client namespace (10.201.0.254), where this Python process
  itself lives after `enter_client()`, so that the recorder and the KV clients
  talk to the nodes over the bridge with ordinary sockets.

The 10.201.0.0/24 network exists only inside these namespaces: nothing in the
root namespace routes to it, and this process sends nothing to the root
namespace once it entered the client namespace. Faults are iptables rules in
a chain CKFAULT hooked into INPUT and OUTPUT of a node's namespace.

Cleanup: `Topology.destroy()` deletes every namespace of the run (killing
by PID whatever still runs inside). `cleanup_stale()` removes namespaces and
tmpfs mounts of earlier runs whose owning PID is gone, and only those with
our prefix.
"""

import ctypes
import os
import random
import re
import shutil
import signal
import subprocess
import time

PREFIX = "ckfault-"
SUBNET = "10.201.0"
CLIENT_IP = SUBNET + ".254"
CLONE_NEWNET = 0x40000000
CHAIN = "CKFAULT"

_STALE = re.compile(r"^" + re.escape(PREFIX) + r"(\d+)-([0-9a-f]+)-")


def sh(args, check=True, timeout=20, input=None):
    """Runs a command (a list), returns CompletedProcess; raises with its
    output when check and it fails."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r


def node_ip(slot):
    return "%s.%d" % (SUBNET, 10 + slot)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns():
    r = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _kill_ns_pids(ns):
    r = sh(["ip", "netns", "pids", ns], check=False)
    for tok in r.stdout.split():
        try:
            pid = int(tok)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_ns(ns):
    _kill_ns_pids(ns)
    sh(["ip", "netns", "delete", ns], check=False)


def cleanup_stale(log=print):
    """Deletes namespaces and unmounts tmpfs mounts named with our prefix
    whose run's PID no longer exists."""
    for ns in list_netns():
        m = _STALE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            log("removing stale namespace %s" % ns)
            delete_ns(ns)
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
    except OSError:
        mounts = []
    for mp in mounts:
        for comp in mp.split("/"):
            m = _STALE.match(comp)
            if m and not _pid_alive(int(m.group(1))):
                log("unmounting stale %s" % mp)
                sh(["umount", "-l", mp], check=False)
                break
    tmp = "/tmp"
    for name in os.listdir(tmp):
        m = _STALE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            log("removing stale %s" % os.path.join(tmp, name))
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def setns_net(path):
    """Moves the calling thread (call it before any other thread starts)
    into the network namespace at `path` (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns(%s): %s" % (path, os.strerror(e)))
    finally:
        os.close(fd)


class Topology:
    """The bridge, the node slots and the client namespace of one run."""

    def __init__(self, slots, tag=None):
        self.tag = tag or "%s%d-%06x-" % (PREFIX, os.getpid(), random.SystemRandom().getrandbits(24))
        self.slots = slots
        self.bridge = self.tag + "br"
        self.client = self.tag + "cl"
        self.nodes = [self.tag + "n%d" % i for i in range(1, slots + 1)]
        self.made = []
        self.rules = {}   # slot -> list of rule arg lists currently installed

    def ns_of(self, slot):
        return self.nodes[slot - 1]

    def create(self):
        br = self.bridge
        self._add_ns(br)
        sh(["ip", "-n", br, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", br, "link", "set", "br0", "up"])
        sh(["ip", "-n", br, "link", "set", "lo", "up"])
        for i, ns in enumerate(self.nodes, 1):
            self._attach(ns, "v%d" % i, node_ip(i))
            self.iptables(i, ["-N", CHAIN])
            self.iptables(i, ["-I", "INPUT", "-j", CHAIN])
            self.iptables(i, ["-I", "OUTPUT", "-j", CHAIN])
        self._attach(self.client, "vc", CLIENT_IP)

    def _add_ns(self, ns):
        sh(["ip", "netns", "add", ns])
        self.made.append(ns)

    def _attach(self, ns, peer, ip):
        self._add_ns(ns)
        # Both ends are created directly inside their namespaces: nothing
        # appears in the namespace this command runs in.
        sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer,
            "netns", self.bridge])
        sh(["ip", "-n", self.bridge, "link", "set", peer, "master", "br0"])
        sh(["ip", "-n", self.bridge, "link", "set", peer, "up"])
        sh(["ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def enter_client(self):
        setns_net("/run/netns/" + self.client)

    def destroy(self):
        for ns in reversed(self.made):
            delete_ns(ns)
        self.made = []

    # -- faults ------------------------------------------------------------

    def iptables(self, slot, args, check=True):
        return sh(["ip", "netns", "exec", self.ns_of(slot), "iptables", "-w", "5"] + args, check=check)

    def drop_in(self, slot, from_slot):
        """slot stops receiving packets from from_slot."""
        self.iptables(slot, ["-A", CHAIN, "-s", node_ip(from_slot), "-j", "DROP"])

    def drop_out(self, slot, to_slot):
        """slot stops sending packets to to_slot."""
        self.iptables(slot, ["-A", CHAIN, "-d", node_ip(to_slot), "-j", "DROP"])

    def cut(self, a, b):
        """No packets between a and b, either way (rules on both sides)."""
        self.drop_out(a, b)
        self.drop_in(a, b)
        self.drop_out(b, a)
        self.drop_in(b, a)

    def one_way(self, src, dst):
        """Packets from src to dst are dropped (on src's way out and on
        dst's way in); dst to src still flows."""
        self.drop_out(src, dst)
        self.drop_in(dst, src)

    def heal(self, slots=None):
        for s in slots or range(1, self.slots + 1):
            self.iptables(s, ["-F", CHAIN], check=False)

    def rules_of(self, slot):
        r = self.iptables(slot, ["-S", CHAIN], check=False)
        return [line for line in r.stdout.splitlines() if line.startswith("-A")]


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False
