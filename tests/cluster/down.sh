#!/usr/bin/env bash
# Stops the local control plane started by up.sh (by the PIDs it recorded: TERM, then KILL after a
# bounded wait) and removes its state directory. Harmless when nothing runs.
#
# Usage: down.sh                 stop everything and delete $CLUSTER_DIR
#        down.sh --only NAME     stop one component (control plane or demo process) and keep the state
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

PIDS="$CLUSTER_DIR/pids"
# Reverse of the start order: the API server's clients go first, etcd last.
STOP_ORDER=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
STOP_GRACE_S=${CLUSTER_STOP_GRACE_S:-15}

# A PID file can outlive its process and the PID be reused by something else; only signal a process
# whose executable is the component we started.
is_our_process() {
  local pid=$1 name=$2
  process_alive "$pid" || return 1
  local exe
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  # A binary replaced on disk while running reads as "<path> (deleted)"; it is still ours.
  exe=${exe% (deleted)}
  # Several processes of one binary (a node agent per node) are named <binary>-<what>.
  local binary
  binary=$(basename "$exe")
  [[ $name == "$binary" || $name == "$binary"-* ]]
}

# Processes that `make demo` started beside the control plane (the operator, node agents): they
# talk to the API server, so they stop first.
workload_components() {
  local pid_file name
  for pid_file in "$PIDS"/*.pid; do
    [[ -e $pid_file ]] || continue
    name=$(basename "$pid_file" .pid)
    [[ " ${STOP_ORDER[*]} " == *" $name "* ]] || echo "$name"
  done
}

stop_component() {
  local name=$1 pid_file="$PIDS/$1.pid"
  [[ -s $pid_file ]] || return 0
  local pid
  pid=$(cat "$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] || die "$pid_file does not hold a PID"
  if is_our_process "$pid" "$name"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_GRACE_S))
    while is_our_process "$pid" "$name" && ((SECONDS < deadline)); do sleep 0.2; done
    if is_our_process "$pid" "$name"; then
      log "$name (pid $pid) ignored SIGTERM for ${STOP_GRACE_S}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while process_alive "$pid"; do sleep 0.1; done
    fi
  fi
  rm -f "$pid_file"
}

main() {
  if [[ ${1:-} == --only ]]; then
    [[ -n ${2:-} ]] || die "--only needs a component name (one of: ${STOP_ORDER[*]})"
    [[ $2 =~ ^[a-z0-9-]+$ ]] || die "'$2' is not a component name"
    stop_component "$2"
    return
  fi
  [[ $# -eq 0 ]] || die "unexpected arguments: $* (usage: down.sh [--only COMPONENT])"

  if [[ ! -e $CLUSTER_DIR ]]; then
    log "no cluster in $CLUSTER_DIR; nothing to stop"
    return
  fi
  # Refuse to delete a directory that up.sh did not create (a mistyped CLUSTER_DIR).
  [[ -e $CLUSTER_DIR/.model-operator-cluster ]] ||
    die "$CLUSTER_DIR exists but was not created by tests/cluster/up.sh; not touching it"
  local workloads
  mapfile -t workloads < <(workload_components)
  for name in "${workloads[@]}" "${STOP_ORDER[@]}"; do stop_component "$name"; done
  rm -rf "$CLUSTER_DIR"
  log "cluster stopped; removed $CLUSTER_DIR"
}

main "$@"
