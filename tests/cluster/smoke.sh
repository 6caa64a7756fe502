#!/usr/bin/env bash
# Smoke test of a running local cluster (`make cluster-up` first): the API answers, the real scheduler
# places GPU pods by extended resources, taints and GFD labels, kwok drives pods to Ready, Jobs to
# Complete and deleted pods away, the aggregation layer's requestheader CA is published, and the
# controller manager syncs HPAs. Works in its own namespace, deleted at the end.
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
KUBECTL="$CLUSTER_DIR/bin/kubectl"
[[ -s $KUBECONFIG_FILE && -x $KUBECTL ]] ||
  die "no cluster in $CLUSTER_DIR (expected kubeconfig and bin/kubectl); run 'make cluster-up' first"
NAMESPACE="smoke-$(date +%s)-$RANDOM"
WAIT_S=${SMOKE_WAIT_S:-60}
FAILURES=0

k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" --namespace "$NAMESPACE" "$@"; }

pass() { printf 'ok   - %s\n' "$*"; }
fail() {
  printf 'FAIL - %s\n' "$*"
  FAILURES=$((FAILURES + 1))
}

# Polls "$@" once a second for up to $WAIT_S seconds.
eventually() {
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

cleanup() {
  k delete namespace "$NAMESPACE" --wait=true --timeout=90s >/dev/null 2>&1 ||
    log "namespace $NAMESPACE was not fully deleted within 90s"
}

# Tolerates the GPU taint and asks for the A100 product by its GFD label, as the operator renders it.
a100_pod_template() {
  local gpus=$1
  cat <<EOF
      tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: nvidia.com/gpu.product, operator: In, values: [NVIDIA-A100-SXM4-80GB]}
      containers:
      - name: model
        image: registry.example/model:1
        resources:
          limits: {nvidia.com/gpu: "$gpus"}
EOF
}

node_of() { k get pod "$1" -o jsonpath='{.spec.nodeName}'; }
pod_ready() { [[ $(k get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
pod_unschedulable() {
  [[ $(k get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}') == Unschedulable ]]
}

check_api() {
  if [[ $(k get --raw /readyz) == ok ]]; then pass "API server /readyz is ok"; else fail "API server /readyz"; fi
  local nodes
  nodes=$(k get nodes -o jsonpath='{.items[*].metadata.name}' | tr ' ' '\n' | sort | tr '\n' ' ')
  if [[ $nodes == "cpu-0 gpu-a100-0 gpu-a100-1 gpu-dra-h100-0 gpu-dra-mig-0 gpu-mig-0 gpu-t4-0 " ]]; then
    pass "the seven fake nodes exist: $nodes"
  else
    fail "unexpected node set: '$nodes'"
  fi
}

check_a100_deployment() {
  k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: a100-model}
spec:
  replicas: 1
  selector: {matchLabels: {app: a100-model}}
  template:
    metadata: {labels: {app: a100-model}}
    spec:
$(a100_pod_template 2)
EOF
  if ! k rollout status deployment/a100-model --timeout="${WAIT_S}s" >/dev/null; then
    fail "Deployment requesting 2 GPUs did not become available"; k describe pods -l app=a100-model; return
  fi
  local pod node
  pod=$(k get pods -l app=a100-model -o jsonpath='{.items[0].metadata.name}')
  node=$(node_of "$pod")
  if [[ $node == gpu-a100-* ]] && pod_ready "$pod"; then
    pass "Deployment pod with 2 × nvidia.com/gpu is Ready on $node"
  else
    fail "Deployment pod $pod on '$node' (want gpu-a100-*, Ready)"
  fi
}

check_too_many_gpus_pending() {
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: nine-gpus}
spec:
$(a100_pod_template 9 | sed 's/^    //')
EOF
  if eventually pod_unschedulable nine-gpus && [[ -z $(node_of nine-gpus) ]]; then
    local message
    message=$(k get pod nine-gpus -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')
    pass "pod requesting 9 GPUs stays Pending: $message"
  else
    fail "pod requesting 9 GPUs was not reported Unschedulable"; k describe pod nine-gpus
  fi
}

check_mig_pod() {
  k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: mig-slice}
spec:
  tolerations:
  - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  containers:
  - name: model
    image: registry.example/model:1
    resources:
      limits: {nvidia.com/mig-1g.10gb: "1"}
EOF
  if eventually pod_ready mig-slice && [[ $(node_of mig-slice) == gpu-mig-0 ]]; then
    pass "pod requesting nvidia.com/mig-1g.10gb is Ready on gpu-mig-0 (IP $(k get pod mig-slice -o jsonpath='{.status.podIP}'))"
  else
    fail "MIG pod not Ready on gpu-mig-0 (node '$(node_of mig-slice)')"; k describe pod mig-slice
  fi
}

check_plain_pod_on_cpu_node() {
  k run plain --image=registry.example/app:1 --restart=Never >/dev/null
  if eventually pod_ready plain && [[ $(node_of plain) == cpu-0 ]]; then
    pass "pod without toleration is Ready on cpu-0, the only untainted node"
  else
    fail "plain pod not Ready on cpu-0 (node '$(node_of plain)')"; k describe pod plain
  fi
}

# Without a kubelet nothing would finish a pod's graceful deletion; kwok's pod-delete stage does.
check_pod_deletion() {
  if k delete pod plain --wait=true --timeout="${WAIT_S}s" >/dev/null; then
    pass "deleted pod is gone (kwok pod-delete stage)"
  else
    fail "pod 'plain' was not removed after deletion"; k get pod plain -o yaml
  fi
}

# Aggregated API servers (the operator's custom-metrics API) trust the front-proxy CA they read from
# this ConfigMap; it must be the CA cluster-up generated, with the proxy client's name allowed.
check_requestheader_ca() {
  local published expected allowed
  published=$(k get configmap extension-apiserver-authentication --namespace kube-system \
    -o jsonpath='{.data.requestheader-client-ca-file}' | tr -d '\n')
  expected=$(tr -d '\n' <"$CLUSTER_DIR/pki/front-proxy-ca.crt")
  allowed=$(k get configmap extension-apiserver-authentication --namespace kube-system \
    -o jsonpath='{.data.requestheader-allowed-names}')
  if [[ -n $expected && $published == *"$expected"* && $allowed == *'"front-proxy-client"'* ]]; then
    pass "kube-system/extension-apiserver-authentication carries the front-proxy CA, allowed names $allowed"
  else
    fail "extension-apiserver-authentication lacks the front-proxy CA or allowed names ('$allowed')"
  fi
}

check_job_completes() {
  k create job finishes --image=registry.example/validate:1 >/dev/null
  if k wait job/finishes --for=condition=Complete --timeout="${WAIT_S}s" >/dev/null; then
    pass "Job completed (kwok pod-complete stage)"
  else
    fail "Job did not complete"; k describe job finishes
  fi
}

hpa_observed() { [[ -n $(k get hpa a100-model -o jsonpath='{.status.conditions[*].type}') ]]; }

check_hpa() {
  k apply -f - >/dev/null <<'EOF'
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: a100-model}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: a100-model}
  minReplicas: 1
  maxReplicas: 2
  metrics:
  - type: Pods
    pods:
      metric: {name: gpu_utilization}
      target: {type: AverageValue, averageValue: 700m}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
EOF
  # The HPA controller writes conditions on its first sync; without a metrics API they say so, which
  # still proves the controller runs.
  if eventually hpa_observed; then
    pass "HPA created and synced by the controller manager (conditions: $(k get hpa a100-model -o jsonpath='{.status.conditions[*].type}'))"
  else
    fail "HPA created but never synced by kube-controller-manager"; k describe hpa a100-model
  fi
}

main() {
  trap cleanup EXIT
  k create namespace "$NAMESPACE" >/dev/null
  log "smoke test in namespace $NAMESPACE against $CLUSTER_DIR"
  check_api
  check_a100_deployment
  check_too_many_gpus_pending
  check_mig_pod
  check_plain_pod_on_cpu_node
  check_pod_deletion
  check_requestheader_ca
  check_job_completes
  check_hpa
  if ((FAILURES > 0)); then
    printf '%d smoke check(s) failed\n' "$FAILURES"
    exit 1
  fi
  printf 'all smoke checks passed\n'
}

main "$@"
