#!/usr/bin/env bash
# make test-deploy: examples/deploy/Dockerfile built and run under Debian's
# podman (rootful, host networking, loopback ports only), from a base image
# made with debootstrap from Debian's archive (no registry is reached).
#
#   tests/deploy/run.sh            (as root; make test-deploy installs podman and debootstrap)
#
# Steps, each timed and printed:
#   1. the base image localhost/ck-debian:bookworm: debootstrap --variant=minbase
#      into a temp dir, then `podman import` (kept between runs; CK_DEPLOY_REBASE=1
#      makes it again);
#   2. `podman build` of examples/deploy/Dockerfile with BASE set to it;
#   3. three containers running examples/kv (node 1 bootstraps, 2 and 3 join
#      through it; RAFT_ADDR given as a host name, "localhost:PORT"), each
#      with its own volume, on free loopback ports;
#   4. the cluster forms (same leader and state index on all three), a PUT on
#      node 1 reads back on node 3, `podman stop` of node 2 is committed as
#      `stopped` (graceful), and after `podman start` it is active again with
#      the value still readable through it.
# Everything it creates (containers, volumes, the temp dir) is removed on exit,
# also on failure; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$(pwd)

if [ "$(id -u)" != 0 ]; then
  echo "test-deploy: needs root (rootful podman, debootstrap); run it as root" >&2
  exit 2
fi
for c in podman debootstrap curl; do
  command -v "$c" >/dev/null 2>&1 || { echo "test-deploy: $c is not installed (make test-deploy installs it)" >&2; exit 2; }
done

MIRROR=${CK_DEPLOY_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/ck-debian:bookworm
IMAGE=localhost/clusterkit:deploy-test
TAG=ckdeploy$$
TMP=$(mktemp -d /tmp/ck-deploy.XXXXXX)
CONTAINERS=()
VOLUMES=()
T0=$(date +%s)

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    for c in "${CONTAINERS[@]}"; do
      echo "---- logs of $c ----" >&2
      podman logs --tail 40 "$c" >&2 2>&1 || true
    done
  fi
  for c in "${CONTAINERS[@]}"; do podman rm -f -t 5 "$c" >/dev/null 2>&1 || true; done
  for v in "${VOLUMES[@]}"; do podman volume rm -f "$v" >/dev/null 2>&1 || true; done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT

step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

# --- 1. the base image ------------------------------------------------------
if [ "${CK_DEPLOY_REBASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
  step "debootstrap --variant=minbase bookworm from $MIRROR"
  debootstrap --variant=minbase bookworm "$TMP/rootfs" "$MIRROR" >"$TMP/debootstrap.log" 2>&1 || {
    tail -20 "$TMP/debootstrap.log" >&2; echo "test-deploy: debootstrap failed (log above)" >&2; exit 1; }
  rm -rf "$TMP/rootfs/var/cache/apt/archives/"*.deb "$TMP/rootfs/var/lib/apt/lists/"*
  tar -C "$TMP/rootfs" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$TMP/rootfs"
  step "base image $BASE imported"
else
  step "base image $BASE already here (CK_DEPLOY_REBASE=1 makes it again)"
fi

# --- the OCI runtime --------------------------------------------------------
# Podman's defaults (crun, rlimits of 1048576 open files and processes) fail on
# hosts that still mount cgroup v1 ("cgroups in hybrid mode not supported") or
# that deny raising a hard rlimit ("setrlimit RLIMIT_NPROC: Operation not
# permitted", as in a VM sandbox without CAP_SYS_RESOURCE, where conmon's own
# limit can be below this shell's). So the rlimits are pinned (open files to
# this shell's hard limit, processes to the first of a few values that works)
# and runc is tried after crun (runc handles cgroup v1). The first combination
# that runs `true` in the base image is used for the build and for the nodes;
# CK_DEPLOY_RUNTIME forces a runtime.
PODMAN=()
for rt in ${CK_DEPLOY_RUNTIME:-crun runc}; do
  for nproc in "$(ulimit -Hu)" 32768 4096; do
    RL=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")
    if podman --runtime "$rt" run --rm --network=host "${RL[@]}" "$BASE" true >"$TMP/probe.log" 2>&1; then
      PODMAN=(podman --runtime "$rt"); break 2
    fi
    echo "test-deploy: runtime $rt, ${RL[*]}: $(tail -1 "$TMP/probe.log")" >&2
  done
done
[ "${#PODMAN[@]}" -gt 0 ] || { echo "test-deploy: no OCI runtime can start a container on this host (see above)" >&2; exit 1; }
step "OCI runtime: ${PODMAN[2]} with ${RL[*]}"

# --- 2. the image -----------------------------------------------------------
step "podman build -f examples/deploy/Dockerfile"
"${PODMAN[@]}" build --pull=never --network=host "${RL[@]}" --build-arg BASE="$BASE" -f examples/deploy/Dockerfile \
  -t "$IMAGE" "$SRC" >"$TMP/build.log" 2>&1 || {
  tail -30 "$TMP/build.log" >&2; echo "test-deploy: podman build failed (log above)" >&2; exit 1; }
step "image $IMAGE built ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"

# --- 3. three nodes -----------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -a HTTP RAFT
for i in 1 2 3; do HTTP[$i]=$(free_port); RAFT[$i]=$(free_port); done
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

run_node() { # i
  local i=$1
  local name="$TAG-node$i" vol="$TAG-data$i" # (a separate `local`: in one, $i would be the caller's)
  local -a env=(-e NODE_ID="node-$i" -e HTTP_ADDR="127.0.0.1:${HTTP[$i]}"
                -e RAFT_ADDR="localhost:${RAFT[$i]}" -e ADVERTISE_HTTP="127.0.0.1:${HTTP[$i]}"
                -e CLUSTER_TOKEN="$TOKEN" -e PARTITION_COUNT=16 -e REPLICATION_FACTOR=3)
  if [ "$i" = 1 ]; then env+=(-e BOOTSTRAP=true); else env+=(-e JOIN_ADDR="127.0.0.1:${HTTP[1]}"); fi
  podman volume create "$vol" >/dev/null
  VOLUMES+=("$vol")
  "${PODMAN[@]}" run -d --name "$name" --network=host "${RL[@]}" --stop-timeout 20 -v "$vol:/data" "${env[@]}" \
    "$IMAGE" /opt/clusterkit/examples/kv/app.lua >/dev/null
  CONTAINERS+=("$name")
}

http() { curl -s -m 2 "$@"; }
wait_for() { # what, tries, command...: polls every 0.2 s, at most `tries` times
  local what=$1 tries=$2; shift 2
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "test-deploy: gave up waiting for $what" >&2
  return 1
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:${HTTP[$1]}/ready")" = 200 ]; }
agreed() { # the three report one leader and one state index
  local seen
  seen=$(for i in 1 2 3; do
           http "http://127.0.0.1:${HTTP[$i]}/consensus/stats" |
             python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["leader_id"], s["state_index"])'
         done | sort -u)
  [ "$(echo "$seen" | wc -l)" = 1 ] && [ -n "$(echo "$seen" | awk '$1 != "" {print}')" ]
}
status_of() { # observer node-id
  http "http://127.0.0.1:${HTTP[$1]}/nodes" |
    python3 -c 'import json, sys; print({n["id"]: n["status"] for n in json.load(sys.stdin)["nodes"]}.get(sys.argv[1], ""))' "$2"
}
is_status() { [ "$(status_of "$1" "$2")" = "$3" ]; }

step "starting 3 containers (host network, HTTP ${HTTP[*]}, raft ${RAFT[*]})"
run_node 1
wait_for "node 1 ready" 150 ready 1
run_node 2
run_node 3
wait_for "node 2 ready" 300 ready 2
wait_for "node 3 ready" 300 ready 3
wait_for "agreement on leader and state index" 150 agreed
step "cluster formed: $(http "http://127.0.0.1:${HTTP[1]}/consensus/leader")"

# --- 4. use it ------------------------------------------------------------------
[ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 -X PUT --data-binary hello \
     "http://127.0.0.1:${HTTP[1]}/kv/greeting")" = 200 ] || { echo "test-deploy: PUT /kv/greeting failed" >&2; exit 1; }
got=$(curl -s -m 5 -L "http://127.0.0.1:${HTTP[3]}/kv/greeting")
[ "$got" = hello ] || { echo "test-deploy: GET /kv/greeting through node 3 answered '$got'" >&2; exit 1; }
step "PUT on node 1, GET on node 3: $got"

"${PODMAN[@]}" stop -t 20 "$TAG-node2" >/dev/null
wait_for "node-2 stopped as seen by node 1" 150 is_status 1 node-2 stopped
code=$(podman inspect --format '{{.State.ExitCode}}' "$TAG-node2")
[ "$code" = 0 ] || { echo "test-deploy: node 2 exited $code after podman stop" >&2; exit 1; }
step "podman stop node 2: committed as stopped, exit code $code"

"${PODMAN[@]}" start "$TAG-node2" >/dev/null
wait_for "node 2 ready again" 150 ready 2
wait_for "node-2 active again" 150 is_status 1 node-2 active
got=$(curl -s -m 5 -L "http://127.0.0.1:${HTTP[2]}/kv/greeting")
[ "$got" = hello ] || { echo "test-deploy: GET through the restarted node 2 answered '$got'" >&2; exit 1; }
step "podman start node 2: active again, reads $got"
step "test-deploy passed"
