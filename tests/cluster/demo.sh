#!/usr/bin/env bash
# `make demo`: the local cluster up, the CRD installed, the operator running in the background
# against it, the examples applied, and `kubectl get md` printed until they settle. Returns with
# everything left running; `make cluster-down` stops it all.
#
# Env: DEMO_SETTLE_S (default 120): how long to watch the ModelDeployments settle.
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

SETTLE_S=${DEMO_SETTLE_S:-120}
KUBECTL="$CLUSTER_DIR/bin/kubectl"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
OPERATOR_NAMESPACE=model-operator-system

kubectl_q() { "$KUBECTL" "$@" >/dev/null; }

# The operator is rebuilt and restarted on every run, so the demo always shows the checkout's code.
start_operator() {
  log "building the operator"
  (cd "$REPO_ROOT" && cargo build --quiet --bin model-operator)
  local target_dir
  target_dir=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  "$CLUSTER_SCRIPTS/down.sh" --only model-operator
  # It watches `default`, where the examples go, and leaves the random namespaces of `make test`
  # to the operators the tests start themselves. Outside the cluster it cannot reach pod IPs (the
  # fake nodes' pods have made-up ones), so ModelReady comes from the kubelet's readiness probe.
  start_detached model-operator "$target_dir/debug/model-operator" run \
    --watch-namespace default \
    --probe-pod-ips=false \
    --lease-namespace "$OPERATOR_NAMESPACE" \
    --metrics-addr 127.0.0.1:18080 \
    --health-addr 127.0.0.1:18081
  local deadline=$((SECONDS + 60))
  until [[ $(curl -s --max-time 2 http://127.0.0.1:18081/readyz) == ready ]]; do
    if ! kill -0 "$(cat "$CLUSTER_DIR/pids/model-operator.pid")" 2>/dev/null; then
      tail -n 20 "$CLUSTER_DIR/logs/model-operator.log" >&2
      die "the operator exited; log: $CLUSTER_DIR/logs/model-operator.log"
    fi
    ((SECONDS < deadline)) || die "the operator is not ready after 60s; log: $CLUSTER_DIR/logs/model-operator.log"
    sleep 1
  done
  log "operator ready (metrics http://127.0.0.1:18080/metrics, log $CLUSTER_DIR/logs/model-operator.log)"
}

# Settled: every ModelDeployment has a phase that waits on nothing the demo will change.
all_settled() {
  local phases
  phases=$("$KUBECTL" get md -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
  [[ -n $phases ]] && ! grep -qvxE 'Ready|Failed|Pending' <<<"$phases"
}

main() {
  "$CLUSTER_SCRIPTS/up.sh"
  kubectl_q apply --server-side --field-manager=model-operator-demo -f "$REPO_ROOT/crds/"
  kubectl_q wait --for=condition=Established --timeout=30s crd/modeldeployments.mlops.sathvik.dev
  "$KUBECTL" create namespace "$OPERATOR_NAMESPACE" --dry-run=client -o yaml | kubectl_q apply -f -
  start_operator
  "$KUBECTL" apply --server-side --field-manager=model-operator-demo -f "$REPO_ROOT/examples/"

  local deadline=$((SECONDS + SETTLE_S))
  while true; do
    printf '\n'
    "$KUBECTL" get md
    all_settled && break
    ((SECONDS < deadline)) || { log "not all settled after ${SETTLE_S}s; the operator keeps working"; break; }
    sleep 3
  done
  cat <<EOT

The cluster and the operator keep running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$CLUSTER_DIR/bin:\$PATH
  kubectl get md,deploy,svc,hpa,jobs
  kubectl describe md resnet50-triton
  kubectl get pods -o wide            # GPU replicas on the gpu-* nodes, others on cpu-0
Stop everything with: make cluster-down
EOT
}

main "$@"
