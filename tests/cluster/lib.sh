# Shared settings for the local control plane scripts: versions, cache and cluster paths, ports.
# Sourced by build.sh, up.sh, down.sh and smoke.sh; defines variables and helpers only.
# shellcheck shell=bash
# Variables here are used by the scripts that source this file.
# shellcheck disable=SC2034

# Pinned versions. Changing one changes the cache directory, so a new version builds once and the
# old one stays usable until removed by hand.
K8S_VERSION=v1.34.4     # newest 1.34 patch on the Go proxy when chosen
ETCD_VERSION=v3.6.16    # newest 3.6 patch; 1.34's envtest matrix pairs it with 3.6.x
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0    # newest helm 3.x

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_SCRIPTS="$REPO_ROOT/tests/cluster"
CACHE_ROOT="${MODEL_OPERATOR_CACHE:-$HOME/.cache/model-operator}"
K8S_HOME="$CACHE_ROOT/k8s-$K8S_VERSION"
ETCD_HOME="$CACHE_ROOT/etcd-$ETCD_VERSION"
KWOK_HOME="$CACHE_ROOT/kwok-$KWOK_VERSION"
HELM_HOME="$CACHE_ROOT/helm-$HELM_VERSION"
CLUSTER_DIR="${CLUSTER_DIR:-$REPO_ROOT/.cluster}"

# Loopback ports, high and away from the usual 2379/6443/10250 so a developer's own cluster or the
# operator's admin ports (8080/8081) do not collide. Every port is its default plus
# CLUSTER_PORT_OFFSET, so clusters side by side (the demo's and the test tier's, or two
# checkouts') each take a set of their own: the Makefile gives `make demo` the offset as set
# (default 0) and the test tier that plus 100. Multiples of 100 up to 1900 keep any two sets apart:
# no default is 100·k from another below 2000 (the API server's 16443 and the demo's custom
# metrics API's 18443 are 2000 apart).
# Unset, it is the offset the cluster in CLUSTER_DIR was started with (up.sh records it), else 0.
CLUSTER_PORT_OFFSET=${CLUSTER_PORT_OFFSET:-$(cat "$CLUSTER_DIR/port-offset" 2>/dev/null || echo 0)}
if ! [[ $CLUSTER_PORT_OFFSET =~ ^[0-9]+$ ]] || ((10#$CLUSTER_PORT_OFFSET % 100 != 0 || 10#$CLUSTER_PORT_OFFSET > 1900)); then
  printf 'error: CLUSTER_PORT_OFFSET=%s is not one of 0, 100, 200, ... 1900 (the Makefile gives the test tier'"'"'s cluster the offset plus 100)\n' "$CLUSTER_PORT_OFFSET" >&2
  exit 1
fi
CLUSTER_PORT_OFFSET=$((10#$CLUSTER_PORT_OFFSET))
ETCD_CLIENT_PORT=$((12379 + CLUSTER_PORT_OFFSET))
ETCD_PEER_PORT=$((12380 + CLUSTER_PORT_OFFSET))
APISERVER_PORT=$((16443 + CLUSTER_PORT_OFFSET))
KCM_PORT=$((16257 + CLUSTER_PORT_OFFSET))
SCHEDULER_PORT=$((16259 + CLUSTER_PORT_OFFSET))
KWOK_PORT=$((16247 + CLUSTER_PORT_OFFSET))
# What `make demo` runs beside the control plane: the operator's metrics, health and custom metrics
# API, and one node agent per node with device-plugin GPUs from DEMO_AGENT_BASE_PORT up
# (tests/cluster/nodes.yaml has three; the sets stay apart up to 43).
DEMO_METRICS_PORT=$((18080 + CLUSTER_PORT_OFFSET))
DEMO_HEALTH_PORT=$((18081 + CLUSTER_PORT_OFFSET))
DEMO_CUSTOM_METRICS_PORT=$((18443 + CLUSTER_PORT_OFFSET))
DEMO_AGENT_BASE_PORT=$((19400 + CLUSTER_PORT_OFFSET))

# Runs that share one cluster's cluster-wide objects (the custom-metrics APIService: e2e, the
# install check, the benches) take turns with this lock. Keyed by the API server's port, which is
# what makes a cluster one; in /tmp, not in CLUSTER_DIR, which cluster-down deletes, and not in
# TMPDIR, which may differ between the runs that must agree on it.
CLUSTER_LOCK="/tmp/model-operator-cluster-$APISERVER_PORT.lock"

# Go toolchain settings shared by every build: local toolchain only, static binaries, and module and
# build caches kept under the cache root so later builds (and CI on this machine) reuse them.
export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=local
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"

# True while the process runs. Unlike `kill -0`, a zombie (exited, not yet reaped by PID 1) counts as
# gone, so waits for a stopped process end as soon as it has exited.
process_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != [ZX] ]]
}

# Starts "$@" detached in its own session so it outlives `make`; the child writes its own PID before
# exec'ing the binary, so the PID file is right whether or not setsid had to fork.
start_detached() {
  local name=$1; shift
  log "starting $name"
  # It keeps none of the caller's descriptors beyond stdio: a lock the caller holds (the cluster
  # lock of with-cluster.sh or the install check) would otherwise stay held while the cluster runs.
  # shellcheck disable=SC2016 # $$, $fd and "$@" belong to the inner shell
  setsid bash -c 'echo $$ >"$1"; shift
    for fd in /proc/$$/fd/*; do fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null; done
    exec "$@"' start_detached "$CLUSTER_DIR/pids/$name.pid" "$@" \
    </dev/null >"$CLUSTER_DIR/logs/$name.log" 2>&1 &
  local waited=0
  until [[ -s "$CLUSTER_DIR/pids/$name.pid" ]]; do
    ((waited++ < 50)) || die "$name did not start (no PID file); see $CLUSTER_DIR/logs/$name.log"
    sleep 0.1
  done
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Waits until OBJECT (kind/name, or kind name) reports condition TYPE=True, polling once a second
# for up to TIMEOUT seconds: `kubectl wait --for=condition` fails at once ("accessor error: <nil>")
# on an object whose status has no conditions yet, as a CRD or APIService just applied has.
# Usage: wait_for_condition KUBECTL TYPE TIMEOUT OBJECT... (KUBECTL may be a shell function).
wait_for_condition() {
  local kubectl=$1 type=$2 timeout=$3; shift 3
  local deadline=$((SECONDS + timeout)) status
  while true; do
    status=$("$kubectl" get "$@" -o "jsonpath={.status.conditions[?(@.type==\"$type\")].status}" 2>/dev/null || true)
    [[ $status == True ]] && return 0
    ((SECONDS < deadline)) || { log "$* is not $type after ${timeout}s"; return 1; }
    sleep 1
  done
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
