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

# Fixed loopback ports: one cluster per machine. High and away from the usual 2379/6443/10250 so a
# developer's own cluster or the operator's admin ports (8080/8081) do not collide.
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
KCM_PORT=16257
SCHEDULER_PORT=16259
KWOK_PORT=16247

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
  # shellcheck disable=SC2016 # $$ and "$@" belong to the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' start_detached "$CLUSTER_DIR/pids/$name.pid" "$@" \
    </dev/null >"$CLUSTER_DIR/logs/$name.log" 2>&1 &
  local waited=0
  until [[ -s "$CLUSTER_DIR/pids/$name.pid" ]]; do
    ((waited++ < 50)) || die "$name did not start (no PID file); see $CLUSTER_DIR/logs/$name.log"
    sleep 0.1
  done
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
