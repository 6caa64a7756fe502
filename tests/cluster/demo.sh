#!/usr/bin/env bash
# `make demo`: the local cluster up, the CRD installed, the operator running in the background
# against it, the examples applied, and `kubectl get md` printed until they settle. Returns with
# everything left running; `make cluster-down` stops it all.
#
# Every GPU node with whole GPUs also gets the real node agent on loopback, backed by the fake NVML
# (utilisation from $CLUSTER_DIR/gpu/NODE/nvml.json, set with tests/cluster/gpu-load.sh) and a fake
# kubelet that hands the node's GPUs to the pods the scheduler bound there; the operator serves
# their samples as custom.metrics.k8s.io behind an APIService, so the autoscaled example's HPA
# scales on them.
#
# Env: DEMO_SETTLE_S (default 120): how long to watch the ModelDeployments settle.
#      DEMO_GPU_UTILIZATION (default 30): the fake GPUs' utilisation at start, in percent.
#      CLUSTER_DIR, CLUSTER_PORT_OFFSET: which cluster, on which ports (lib.sh; default .cluster, 0).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

SETTLE_S=${DEMO_SETTLE_S:-120}
KUBECTL="$CLUSTER_DIR/bin/kubectl"
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
OPERATOR_NAMESPACE=model-operator-system
GPU_UTILIZATION=${DEMO_GPU_UTILIZATION:-30}
# Loopback ports (lib.sh): the custom metrics API, and the node agents from AGENT_BASE_PORT up.
CUSTOM_METRICS_PORT=$DEMO_CUSTOM_METRICS_PORT
AGENT_BASE_PORT=$DEMO_AGENT_BASE_PORT
AGENT_ENDPOINTS=""

kubectl_q() { "$KUBECTL" "$@" >/dev/null; }

target_dir() {
  (cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
}

# A node agent and a following fake kubelet per node with whole GPUs (`nvidia.com/gpu`), their
# device IDs as the device plugin would name them (`<uuid>::<n>` for time-sliced replicas).
start_node_agents() {
  log "building the node agent and its test doubles"
  (cd "$REPO_ROOT" && cargo build --quiet -p node-agent -p fake-nvml -p fake-kubelet)
  local bin node index=0
  bin="$(target_dir)/debug"
  local nodes
  nodes=$("$KUBECTL" get nodes -o jsonpath='{range .items[?(@.status.allocatable.nvidia\.com/gpu)]}{.metadata.name}{"\n"}{end}')
  for node in $nodes; do
    local dir="$CLUSTER_DIR/gpu/$node" count replicas product memory
    label() { "$KUBECTL" get node "$node" -o jsonpath="{.metadata.labels.nvidia\.com/gpu\.$1}"; }
    count=$(label count) replicas=$(label replicas) product=$(label product) memory=$(label memory)
    mkdir -p "$dir"
    cp "$bin/libnvidia_ml.so" "$dir/libnvidia-ml.so.1"
    : >"$dir/gpus"
    local gpu replica devices=""
    for ((gpu = 0; gpu < ${count:-0}; gpu++)); do
      local uuid
      uuid=$(printf 'GPU-%08x-0000-4000-8000-%012x' "$index" "$gpu")
      echo "$uuid ${product%-SHARED}" >>"$dir/gpus"
      if ((${replicas:-1} > 1)); then
        for ((replica = 0; replica < replicas; replica++)); do devices+="${devices:+,}$uuid::$replica"; done
      else
        devices+="${devices:+,}$uuid"
      fi
    done
    echo "${memory:-16384}" >"$dir/memory"
    "$CLUSTER_SCRIPTS/gpu-load.sh" "$GPU_UTILIZATION" "$node"
    local port=$((AGENT_BASE_PORT + index))
    "$CLUSTER_SCRIPTS/down.sh" --only "node-agent-$node"
    "$CLUSTER_SCRIPTS/down.sh" --only "fake-kubelet-podresources-$node"
    start_detached "fake-kubelet-podresources-$node" env KUBECONFIG="$KUBECONFIG" \
      "$bin/fake-kubelet-podresources" --socket "$dir/kubelet.sock" --follow-node "$node" --devices "$devices"
    start_detached "node-agent-$node" env FAKE_NVML_CONFIG="$dir/nvml.json" \
      "$bin/node-agent" --nvml-lib "$dir/libnvidia-ml.so.1" --pod-resources-socket "$dir/kubelet.sock" \
      --listen "127.0.0.1:$port" --node-name "$node" --pod-resources-interval 2s
    AGENT_ENDPOINTS+="${AGENT_ENDPOINTS:+,}$node=127.0.0.1:$port"
    index=$((index + 1))
  done
  log "node agents: $AGENT_ENDPOINTS (GPU utilisation ${GPU_UTILIZATION} %; change it with tests/cluster/gpu-load.sh)"
}

# kube-apiserver reaches the operator's custom metrics API on loopback: an ExternalName Service of
# 127.0.0.1 (nothing routes cluster IPs here) behind the APIService.
register_custom_metrics() {
  "$KUBECTL" apply --server-side --field-manager=model-operator-demo -f - >/dev/null <<EOT
apiVersion: v1
kind: Service
metadata:
  name: model-operator-custom-metrics
  namespace: $OPERATOR_NAMESPACE
spec:
  type: ExternalName
  externalName: 127.0.0.1
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta2.custom.metrics.k8s.io
spec:
  group: custom.metrics.k8s.io
  version: v1beta2
  service: {name: model-operator-custom-metrics, namespace: $OPERATOR_NAMESPACE, port: $CUSTOM_METRICS_PORT}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 200
EOT
  wait_for_condition "$KUBECTL" Available 60 apiservice/v1beta2.custom.metrics.k8s.io
  log "custom.metrics.k8s.io/v1beta2 served by the operator on 127.0.0.1:$CUSTOM_METRICS_PORT"
}

# The operator is rebuilt and restarted on every run, so the demo always shows the checkout's code.
start_operator() {
  log "building the operator"
  (cd "$REPO_ROOT" && cargo build --quiet --bin model-operator)
  "$CLUSTER_SCRIPTS/down.sh" --only model-operator
  # It watches `default`, where the examples go, and leaves the random namespaces of `make test`
  # to the operators the tests start themselves. Outside the cluster it cannot reach pod IPs (the
  # fake nodes' pods have made-up ones), so ModelReady comes from the kubelet's readiness probe.
  start_detached model-operator "$(target_dir)/debug/model-operator" run \
    --watch-namespace default \
    --probe-pod-ips=false \
    --lease-namespace "$OPERATOR_NAMESPACE" \
    --metrics-addr "127.0.0.1:$DEMO_METRICS_PORT" \
    --health-addr "127.0.0.1:$DEMO_HEALTH_PORT" \
    --custom-metrics-addr "127.0.0.1:$CUSTOM_METRICS_PORT" \
    --agent-endpoints "$AGENT_ENDPOINTS"
  local deadline=$((SECONDS + 60))
  until [[ $(curl -s --max-time 2 "http://127.0.0.1:$DEMO_HEALTH_PORT/readyz") == ready ]]; do
    if ! kill -0 "$(cat "$CLUSTER_DIR/pids/model-operator.pid")" 2>/dev/null; then
      tail -n 20 "$CLUSTER_DIR/logs/model-operator.log" >&2
      die "the operator exited; log: $CLUSTER_DIR/logs/model-operator.log"
    fi
    ((SECONDS < deadline)) || die "the operator is not ready after 60s; log: $CLUSTER_DIR/logs/model-operator.log"
    sleep 1
  done
  log "operator ready (metrics http://127.0.0.1:$DEMO_METRICS_PORT/metrics, log $CLUSTER_DIR/logs/model-operator.log)"
}

# Settled: every ModelDeployment has a phase that waits on nothing the demo will change.
all_settled() {
  local phases
  phases=$("$KUBECTL" get md -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
  [[ -n $phases ]] && ! grep -qvxE 'Ready|Failed|Pending' <<<"$phases"
}

main() {
  "$CLUSTER_SCRIPTS/up.sh"
  kubectl_q apply --server-side --field-manager=model-operator-demo -f "$REPO_ROOT/crds/modeldeployments.mlops.sathvik.dev.yaml"
  wait_for_condition "$KUBECTL" Established 30 crd/modeldeployments.mlops.sathvik.dev
  "$KUBECTL" create namespace "$OPERATOR_NAMESPACE" --dry-run=client -o yaml | kubectl_q apply -f -
  start_node_agents
  start_operator
  register_custom_metrics
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
  kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/gpu_utilization?labelSelector=model%3Dresnet50-triton"
  tests/cluster/gpu-load.sh 95        # raise the fake GPUs' load (all nodes, or name them)
  kubectl get hpa resnet50-triton -w  # the target column follows; replicas go up to 4
  tests/cluster/gpu-load.sh 10        # and back down (the HPA waits its 5-minute stabilisation)
Stop everything with: make cluster-down
EOT
}

main "$@"
