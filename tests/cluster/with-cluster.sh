#!/usr/bin/env bash
# Runs a command against the local cluster in CLUSTER_DIR, holding that cluster's lock (lib.sh's
# CLUSTER_LOCK) from before the cluster is started or adjusted until the command ends: runs that
# use its cluster-wide objects (the custom-metrics APIService; the controller manager's HPA sync
# period) take turns instead of taking them from each other. The e2e tier, the benches and `make
# install-check` (which takes the same lock itself) use it.
#
# Usage: with-cluster.sh COMMAND [ARG...]
# Env:   CLUSTER_DIR, CLUSTER_PORT_OFFSET (see lib.sh); HPA_SYNC_PERIOD (default: what the running
#        cluster has, 15s for a new one); LOCK_WAIT_S (default 1800).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

LOCK_WAIT_S=${LOCK_WAIT_S:-1800}

main() {
  [[ $# -gt 0 ]] || die "usage: with-cluster.sh COMMAND [ARG...]"
  command -v flock >/dev/null || die "flock (util-linux) is required"
  exec 9>"$CLUSTER_LOCK"
  if ! flock -n 9; then
    log "waiting for the cluster lock $CLUSTER_LOCK (another run is using the cluster in $CLUSTER_DIR)"
    flock -w "$LOCK_WAIT_S" 9 || die "waited ${LOCK_WAIT_S}s for $CLUSTER_LOCK; is a run on that cluster stuck?"
  fi
  # The lock's descriptor stays here: the command's children (operators, servers) must not keep
  # it after this script ends.
  HPA_SYNC_PERIOD=${HPA_SYNC_PERIOD:-$(cat "$CLUSTER_DIR/hpa-sync-period" 2>/dev/null || echo 15s)} \
    "$CLUSTER_SCRIPTS/up.sh" 9>&-
  export CLUSTER_DIR CLUSTER_PORT_OFFSET
  "$@" 9>&-
}

main "$@"
