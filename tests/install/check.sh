#!/usr/bin/env bash
# The install bundles on the local control plane (`make install-check`): `kubectl apply
# --server-side -k config/default`, then the Helm chart in another namespace, each with its
# defaults on a cluster without prometheus-operator's ServiceMonitor CRD, as a vanilla cluster is.
# For each it checks that
#
#   - the API server accepts every object (server-side dry run first, then for real);
#   - the operator Deployment has 2 replicas and they run (kwok fakes running pods: no image is
#     pulled), and the node-agent DaemonSet runs exactly on the GPU nodes;
#   - the operator's pods would pass Pod Security `restricted` (only the node agent needs more);
#   - RBAC has no wildcard, and the node agent's ServiceAccount may write nothing;
#   - the operator's ServiceAccount may do everything the operator does: the real operator binary
#     runs on this machine *as that ServiceAccount* (impersonated), must sync every watch cache,
#     take the leader Lease, reconcile a ModelDeployment through validation Job, ConfigMap,
#     Deployment, Service and HPA to Ready, prune the HPA, publish Events and release the Lease,
#     without a single "forbidden" in its log;
#   - the activator Deployment has 2 replicas and they run, and its ServiceAccount is enough for
#     the real binary (`model-operator activator`, impersonated): its watches list, and a request
#     for a model at zero makes it scale the model to one through /scale, with no "forbidden";
#   - with the ServiceMonitor CRD then installed, the opt-in monitors apply on top and select the
#     Services they scrape: config/prometheus (config/default plus the monitors), and the chart
#     upgraded with serviceMonitor.enabled=true;
#
# then removes everything it created and waits until it is gone. The ModelDeployment CRD is shared
# with the e2e tier and is never deleted. Before the chart, the helm that tests/cluster/build.sh
# built must report the pinned version and render the chart without --kube-version, as a
# released helm does. The custom-metrics APIService has a fixed name that the e2e autoscaling test
# also registers, so the whole run holds the cluster lock (lib.sh's CLUSTER_LOCK) that e2e runs
# take too (tests/cluster/with-cluster.sh), and deletes the APIService before it lets go.
#
# Env: CLUSTER_DIR, CLUSTER_PORT_OFFSET (the cluster, started if needed; see tests/cluster/lib.sh;
# `make install-check` gives the test tier's), MODEL_OPERATOR_BIN (an operator binary to run;
# default: `cargo build --bin model-operator`), LOCK_WAIT_S (default 1800).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/../cluster/lib.sh"

LOCK_WAIT_S=${LOCK_WAIT_S:-1800}
WAIT_S=120
KUBECTL="$CLUSTER_DIR/bin/kubectl"
HELM="$CLUSTER_DIR/bin/helm"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
# prometheus-operator's real ServiceMonitor CRD, from its Go module (cached in GOMODCACHE).
PROMETHEUS_OPERATOR_VERSION=v0.85.0
SERVICEMONITOR_CRD=servicemonitors.monitoring.coreos.com
# Marks the ServiceMonitor CRD as this check's, so a run killed before its cleanup is recognised
# as the one that left it, and a CRD someone else installed is never deleted.
CRD_OWNER_LABEL=model-operator.sathvik.dev/installed-by=install-check
MODEL_CRD=modeldeployments.mlops.sathvik.dev
API_SERVICE=v1beta2.custom.metrics.k8s.io
KUSTOMIZE_NAMESPACE=model-operator-system
HELM_NAMESPACE=model-operator-helm-check
HELM_RELEASE=helm-check
# Where the operator runs as its ServiceAccount: one namespace of its own, so nothing else is touched.
MODEL_NAMESPACE=install-check-models
# The namespaced install's own, fresh: the first namespace cannot be deleted while the release's
# APIService is unavailable (the namespace controller needs complete discovery), so cleanup does it.
NAMESPACED_MODEL_NAMESPACE=install-check-namespaced
MODEL=install-check

WORK=$(mktemp -d /tmp/install-check.XXXXXX)
OPERATOR_PID=
ACTIVATOR_PID=

k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
helm_() { "$HELM" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
fail() { die "install-check: $*"; }

# Polls "$@" every second for up to $1 seconds.
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
    sleep 1
  done
}

gone() { ! k get "$@" >/dev/null 2>&1; }

one_line() { tr '\n' ' ' <<<"$1" | sed 's/ $//'; }

# ---------------------------------------------------------------------------------------------
# Cleanup: runs on every exit, so a failed check leaves the cluster as it found it.

stop_operator() {
  [[ -n $OPERATOR_PID ]] || return 0
  kill -TERM "$OPERATOR_PID" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while process_alive "$OPERATOR_PID" && ((SECONDS < deadline)); do sleep 0.5; done
  if process_alive "$OPERATOR_PID"; then
    log "the operator did not stop on SIGTERM within 20s; killing it"
    kill -KILL "$OPERATOR_PID" 2>/dev/null || true
  fi
  wait "$OPERATOR_PID" 2>/dev/null || true
  OPERATOR_PID=
}

# The APIService goes before any namespace: while it points at a Service with no server behind
# it (nothing routes cluster IPs here), discovery is partial and the namespace controller cannot
# finish a deletion (REFERENCE.md §1.5).
delete_api_service() {
  k delete apiservice "$API_SERVICE" --ignore-not-found --wait=true --timeout=60s >/dev/null || true
}

# The namespace the operator wrote into; deleted once the APIService is gone.
delete_model_namespace() {
  for namespace in "$MODEL_NAMESPACE" "$NAMESPACED_MODEL_NAMESPACE"; do
    k delete namespace "$namespace" --ignore-not-found --wait=true --timeout="${WAIT_S}s" >/dev/null ||
      log "warning: namespace $namespace was not gone after ${WAIT_S}s"
  done
}

delete_kustomize_install() {
  delete_api_service
  delete_model_namespace
  [[ -s $WORK/kustomize.objects ]] || return 0
  local kind name namespace
  while read -r kind name namespace; do
    case $kind in
      CustomResourceDefinition | Namespace) continue ;; # the CRD is shared; the namespace goes last
    esac
    k delete "$kind" "$name" ${namespace:+--namespace "$namespace"} --ignore-not-found --wait=false >/dev/null || true
  done <"$WORK/kustomize.objects"
  k delete namespace "$KUSTOMIZE_NAMESPACE" --ignore-not-found --wait=true --timeout="${WAIT_S}s" >/dev/null ||
    log "warning: namespace $KUSTOMIZE_NAMESPACE was not gone after ${WAIT_S}s"
}

delete_helm_install() {
  if helm_ status "$HELM_RELEASE" --namespace "$HELM_NAMESPACE" >/dev/null 2>&1; then
    helm_ uninstall "$HELM_RELEASE" --namespace "$HELM_NAMESPACE" --wait --timeout "${WAIT_S}s" >/dev/null ||
      log "warning: helm uninstall $HELM_RELEASE failed"
  fi
  delete_api_service
  delete_model_namespace
  k delete namespace "$HELM_NAMESPACE" --ignore-not-found --wait=true --timeout="${WAIT_S}s" >/dev/null ||
    log "warning: namespace $HELM_NAMESPACE was not gone after ${WAIT_S}s"
}

stop_activator() {
  [[ -n $ACTIVATOR_PID ]] || return 0
  kill -KILL "$ACTIVATOR_PID" 2>/dev/null || true
  wait "$ACTIVATOR_PID" 2>/dev/null || true
  ACTIVATOR_PID=
}

cleanup() {
  local status=$?
  stop_operator
  stop_activator
  delete_kustomize_install
  delete_helm_install
  remove_servicemonitor_crd
  if ((status != 0)); then
    log "install-check FAILED; its files (operator logs, rendered manifests) are in $WORK"
  else
    rm -rf "$WORK"
  fi
}

# ---------------------------------------------------------------------------------------------
# Checks shared by both installs.

# $1 namespace, $2 Deployment, $3 DaemonSet
check_workloads() {
  local namespace=$1 deployment=$2 daemonset=$3
  local replicas
  replicas=$(k get deployment "$deployment" -n "$namespace" -o jsonpath='{.spec.replicas}')
  [[ $replicas == 2 ]] || fail "deployment/$deployment in $namespace has $replicas replicas, not 2"
  k rollout status deployment "$deployment" -n "$namespace" --timeout="${WAIT_S}s" >/dev/null ||
    fail "deployment/$deployment in $namespace did not become available"
  local running
  running=$(k get pods -n "$namespace" -l app.kubernetes.io/name=model-operator,app.kubernetes.io/component=controller \
    --field-selector=status.phase=Running -o name | wc -l)
  ((running == 2)) || fail "$running operator pods run in $namespace, not 2"
  local activator=$4
  replicas=$(k get deployment "$activator" -n "$namespace" -o jsonpath='{.spec.replicas}')
  [[ $replicas == 2 ]] || fail "deployment/$activator in $namespace has $replicas replicas, not 2"
  k rollout status deployment "$activator" -n "$namespace" --timeout="${WAIT_S}s" >/dev/null ||
    fail "deployment/$activator in $namespace did not become available"

  # Every GPU node (GPU feature discovery's label) and no other node gets an agent.
  local gpu_nodes
  gpu_nodes=$(k get nodes -l nvidia.com/gpu.present=true -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
  [[ -n $gpu_nodes ]] || fail "the cluster has no node labelled nvidia.com/gpu.present=true"
  # Captured first: `grep -q` stops reading at the first match, and under pipefail the SIGPIPE
  # kubectl gets then fails the check once there is more than one such node.
  local unlabelled
  unlabelled=$(k get nodes -l '!nvidia.com/gpu.present' -o name)
  [[ -n $unlabelled ]] ||
    fail "the cluster has no CPU-only node, so GPU-only scheduling is not tested"
  wait_until "$WAIT_S" "daemonset/$daemonset in $namespace to run on every GPU node" daemonset_ready "$namespace" "$daemonset"
  local agent_nodes
  agent_nodes=$(k get pods -n "$namespace" -l app.kubernetes.io/name=node-agent \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort)
  [[ $agent_nodes == "$gpu_nodes" ]] ||
    fail "node agents of daemonset/$daemonset run on [$(one_line "$agent_nodes")], the GPU nodes are [$(one_line "$gpu_nodes")]"
  log "$namespace: deployment/$deployment and deployment/$activator 2/2 running; daemonset/$daemonset on the GPU nodes only: $(one_line "$agent_nodes")"
}

daemonset_ready() {
  local desired ready
  read -r desired ready < <(k get daemonset "$2" -n "$1" -o jsonpath='{.status.desiredNumberScheduled} {.status.numberReady}')
  [[ -n $desired && $desired != 0 && $desired == "$ready" ]]
}

# What the API server's PodSecurity admission says of the running pods at `restricted`: only the
# node agent (hostPath, root) may be named.
check_pod_security() {
  local namespace=$1 warnings
  warnings=$(k label --dry-run=server --overwrite namespace "$namespace" \
    pod-security.kubernetes.io/enforce=restricted 2>&1 >/dev/null)
  grep -q 'node-agent' <<<"$warnings" ||
    fail "expected PodSecurity 'restricted' to name the node agent's pods in $namespace; it said: $warnings"
  local offenders
  offenders=$(grep '^Warning: ' <<<"$warnings" | grep -v 'violate the new PodSecurity' | grep -v '^Warning: [^ :]*node-agent' || true)
  [[ -z $offenders ]] || fail "pods other than the node agent's violate PodSecurity 'restricted' in $namespace: $offenders"
}

# No '*' in any rule of the given roles ("Kind name [namespace]" lines on stdin).
check_no_wildcards() {
  local kind name namespace rules
  while read -r kind name namespace; do
    rules=$(k get "$kind" "$name" ${namespace:+--namespace "$namespace"} \
      -o jsonpath='{range .rules[*]}{.apiGroups} {.resources} {.verbs}{"\n"}{end}')
    if grep -F '"*"' <<<"$rules"; then
      fail "$kind/$name has a wildcard rule"
    fi
  done
}

# The node agent may write nothing: beyond the self-reviews every authenticated user may create,
# `kubectl auth can-i --list` must show only read verbs.
check_agent_writes_nothing() {
  local namespace=$1 account=$2 rights writes
  rights=$(k auth can-i --list --namespace "$namespace" --as "system:serviceaccount:$namespace:$account")
  writes=$(awk 'NR > 1 && $1 !~ /^selfsubject(access|rules)?reviews\./ && $0 ~ /create|update|patch|delete|deletecollection|\[\*\]|escalate|bind|impersonate/' <<<"$rights")
  [[ -z $writes ]] || fail "serviceaccount $namespace/$account may write: $writes"
  for verb in create patch delete; do
    for resource in pods configmaps nodes leases.coordination.k8s.io modeldeployments.mlops.sathvik.dev; do
      [[ $(k auth can-i "$verb" "$resource" --all-namespaces --as "system:serviceaccount:$namespace:$account" 2>/dev/null) == no ]] ||
        fail "serviceaccount $namespace/$account may $verb $resource"
    done
  done
}

operator_binary() {
  if [[ -n ${MODEL_OPERATOR_BIN:-} ]]; then
    [[ -x $MODEL_OPERATOR_BIN ]] || fail "MODEL_OPERATOR_BIN=$MODEL_OPERATOR_BIN is not an executable"
    printf '%s' "$MODEL_OPERATOR_BIN"
    return
  fi
  (cd "$REPO_ROOT" && ${CARGO:-cargo} build --quiet --bin model-operator) >&2
  printf '%s' "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/model-operator"
}

log_field() { grep -o "\"$2\":\"[^\"]*\"" "$1" | head -n 1 | cut -d'"' -f4; }

# Fails, showing first what the API server refused the operator (its log's "forbidden" errors).
operator_fail() {
  local log=$1; shift
  grep -i forbidden "$log" | sed -n 's/.*"error":"\(.*\)"},"target".*/\1/p' | sort -u | head -n 5 | cut -c1-400 >&2 || true
  fail "$* (log: $log)"
}

http_ok() { curl -sf --max-time 2 "$1" >/dev/null; }

has_object() { k get "$1" "$2" -n "$MODEL_NAMESPACE" >/dev/null 2>&1; }
no_object() { ! has_object "$@"; }

no_hpa() { ! k get hpa "$MODEL" -n "$MODEL_NAMESPACE" >/dev/null 2>&1; }

has_events() {
  k get events.events.k8s.io -n "$MODEL_NAMESPACE" --field-selector "regarding.name=$MODEL" -o name | grep -q .
}

# Becomes "$@" run as serviceaccount $1/$2 (exec: a caller that puts it in the background gets
# the program's own PID). The impersonation variables are kube-rs' own (Config::infer); the admin
# certificate may impersonate. Groups as the API server gives a ServiceAccount's token.
exec_as_serviceaccount() {
  local namespace=$1 account=$2
  shift 2
  KUBECONFIG="$KUBECONFIG_FILE" \
    KUBE_RS_DEBUG_IMPERSONATE_USER="system:serviceaccount:$namespace:$account" \
    KUBE_RS_DEBUG_IMPERSONATE_GROUP="system:serviceaccounts,system:serviceaccounts:$namespace,system:authenticated" \
    RUST_LOG=info exec "$@"
}

# Prints field $3 of the JSON log $2 once process $1 has logged it (its listening addresses);
# fails naming $4 when the process exits first or 60 s pass.
listening_field() {
  local pid=$1 log=$2 field=$3 what=$4 deadline=$((SECONDS + 60)) value=
  until [[ -n $value ]]; do
    process_alive "$pid" || { tail -n 20 "$log" >&2; fail "$what exited at start (log: $log)"; }
    ((SECONDS < deadline)) || fail "$what logged no listening addresses in 60s (log: $log)"
    sleep 0.5
    value=$(log_field "$log" "$field")
  done
  printf '%s' "$value"
}

# Runs the operator binary as the ServiceAccount the install created ($1 namespace, $2 account,
# $3 node-agent Service, $5 activator Service) and drives one ModelDeployment through every kind
# of write it makes.
check_operator_rbac() {
  local namespace=$1 account=$2 agent_service=$3 label=$4 activator_service=$5
  local log="$WORK/operator-$label.log"
  k create namespace "$MODEL_NAMESPACE" --dry-run=client -o yaml | k apply --server-side -f - >/dev/null
  log "$label: running the operator as serviceaccount $namespace/$account"
  # Its fd 9 (the cluster lock) is closed: a stray operator must not hold the lock.
  exec_as_serviceaccount "$namespace" "$account" \
    "$OPERATOR_BIN" --log-format json run \
    --watch-namespace "$MODEL_NAMESPACE" \
    --lease-namespace "$namespace" --lease-name install-check-leader --holder-id install-check \
    --agent-namespace "$namespace" --agent-service "$agent_service" \
    --activator-service "$namespace/$activator_service" \
    --metrics-addr 127.0.0.1:0 --health-addr 127.0.0.1:0 --custom-metrics-addr 127.0.0.1:0 \
    --probe-pod-ips=false >"$log" 2>&1 9>&- &
  OPERATOR_PID=$!

  local health
  health=$(listening_field "$OPERATOR_PID" "$log" health_addr "$label: the operator")
  # /readyz: every watch cache listed, i.e. list+watch on every kind it caches.
  wait_until 60 "$label: the operator's /readyz (every watch cache synced; log: $log)" http_ok "http://$health/readyz"
  wait_until 30 "$label: the operator to take the leader Lease (log: $log)" grep -q 'became the leader' "$log"

  # TorchServe (a ConfigMap), a validation Job and an HPA: every kind the operator writes.
  k apply -n "$MODEL_NAMESPACE" -f - >/dev/null <<EOF
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: $MODEL
spec:
  modelURI: https://example.com/models/install-check.mar
  runtime: torchserve
  version: v1
  validateScript: validate.py
  resources:
    requests: {cpu: 100m, memory: 128Mi}
  autoscale: true
  autoscaling: {minReplicas: 1, maxReplicas: 2, metric: cpu, target: 80}
EOF
  wait_for_condition k Ready 90 "modeldeployment/$MODEL" -n "$MODEL_NAMESPACE" ||
    operator_fail "$log" "$label: ModelDeployment $MODEL did not become Ready under the operator's RBAC"
  for object in job configmap deployment service hpa; do
    k get "$object" -n "$MODEL_NAMESPACE" -l app.kubernetes.io/managed-by=model-operator -o name | grep -q . ||
      fail "$label: the operator created no $object for $MODEL"
  done
  # Pruning: the HPA goes when autoscaling is turned off.
  k patch "modeldeployment/$MODEL" -n "$MODEL_NAMESPACE" --type merge -p '{"spec":{"autoscale":false}}' >/dev/null
  wait_until 30 "$label: the operator to delete the HPA of $MODEL (log: $log)" no_hpa
  wait_until 30 "$label: Events about $MODEL" has_events
  # At zero, the Service points at the activator (whose kwok pods are "ready") through the
  # operator's EndpointSlice; serving again, the slice goes.
  k patch "modeldeployment/$MODEL" -n "$MODEL_NAMESPACE" --type merge -p '{"spec":{"replicas":0}}' >/dev/null
  wait_until 60 "$label: the operator to point $MODEL's Service at the activator (log: $log)" \
    has_object endpointslice "$MODEL-service-activator"
  k patch "modeldeployment/$MODEL" -n "$MODEL_NAMESPACE" --type merge -p '{"spec":{"replicas":1}}' >/dev/null
  wait_until 60 "$label: the operator to give $MODEL's Service back to its pods (log: $log)" \
    no_object endpointslice "$MODEL-service-activator"

  stop_operator
  grep -q 'stepped down as leader' "$log" || fail "$label: the operator did not release its Lease on SIGTERM (log: $log)"
  if grep -qiE 'forbidden|\b403\b' "$log"; then
    operator_fail "$log" "$label: the API server refused the operator something (above)"
  fi
  log "$label: the operator synced, led, reconciled $MODEL to Ready, pruned its HPA, handed its Service to the activator and back, and published Events as $namespace/$account"
}

scaled_to_one() {
  [[ $(k get modeldeployment "$1" -n "$MODEL_NAMESPACE" -o jsonpath='{.spec.replicas}') == 1 ]]
}

deployment_scaled_to_one() {
  [[ $(k get deployment "$1" -n "$MODEL_NAMESPACE" -o jsonpath='{.spec.replicas}') == 1 ]]
}

# Runs the activator binary as its ServiceAccount ($1 namespace, $2 account): its watches must
# list, and a request for a model at zero must make it scale the model to one; for a model the
# operator put to sleep for being idle, its Deployment (status.idle says so; set by hand here).
check_activator_rbac() {
  local namespace=$1 account=$2 label=$3
  local log="$WORK/activator-$label.log" model=install-check-zero idle=install-check-idle
  k create namespace "$MODEL_NAMESPACE" --dry-run=client -o yaml | k apply --server-side -f - >/dev/null
  k apply -n "$MODEL_NAMESPACE" -f - >/dev/null <<EOF
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: $model
spec:
  modelURI: https://example.com/models/install-check.pt
  runtime: fastapi-pytorch
  replicas: 0
---
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: $idle
spec:
  modelURI: https://example.com/models/install-check.pt
  runtime: fastapi-pytorch
  autoscale: true
  resources: {requests: {cpu: 100m}}
  autoscaling: {minReplicas: 0, scaleToZeroAfter: 10m}
EOF
  k create deployment "$idle" -n "$MODEL_NAMESPACE" --image=registry.invalid/none --replicas=0 \
    --dry-run=client -o yaml | k apply --server-side -f - >/dev/null
  k patch modeldeployment "$idle" -n "$MODEL_NAMESPACE" --subresource=status --type merge \
    -p '{"status":{"idle":{"since":"2026-01-01T00:00:00Z","requests":3,"scaledToZeroAt":"2026-01-01T00:10:00Z"}}}' >/dev/null
  log "$label: running the activator as serviceaccount $namespace/$account"
  exec_as_serviceaccount "$namespace" "$account" \
    "$OPERATOR_BIN" --log-format json activator \
    --watch-namespace "$MODEL_NAMESPACE" \
    --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --health-addr 127.0.0.1:0 \
    --forward-to-pod-ips=false >"$log" 2>&1 9>&- &
  ACTIVATOR_PID=$!
  # Both addresses are on the one "activator listening" line.
  local health http
  health=$(listening_field "$ACTIVATOR_PID" "$log" health "$label: the activator")
  http=$(log_field "$log" http)
  wait_until 60 "$label: the activator's /readyz (its watches listed; log: $log)" http_ok "http://$health/readyz"
  # Held (the model never answers here) until curl gives up; what counts is the scale-up.
  curl -s --max-time 3 -H "Host: $model-service.$MODEL_NAMESPACE" -d '{}' "http://$http/predict" >/dev/null || true
  wait_until 30 "$label: the activator to scale $model to one (log: $log)" scaled_to_one "$model"
  curl -s --max-time 3 -H "Host: $idle-service.$MODEL_NAMESPACE" -d '{}' "http://$http/predict" >/dev/null || true
  wait_until 30 "$label: the activator to scale the Deployment of $idle to one (log: $log)" \
    deployment_scaled_to_one "$idle"
  stop_activator
  if grep -qiE 'forbidden|\b403\b' "$log"; then
    operator_fail "$log" "$label: the API server refused the activator something (above)"
  fi
  k delete modeldeployment "$model" "$idle" -n "$MODEL_NAMESPACE" --ignore-not-found --wait=false >/dev/null
  k delete deployment "$idle" -n "$MODEL_NAMESPACE" --ignore-not-found --wait=false >/dev/null
  log "$label: the activator listed its watches and scaled a model at zero (and an idle one's Deployment) to one as $namespace/$account"
}

# ---------------------------------------------------------------------------------------------

servicemonitor_crd_file() {
  local module=github.com/prometheus-operator/prometheus-operator dir
  dir=$(go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  local crd="$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
  [[ -f $crd ]] || fail "no ServiceMonitor CRD at $crd (go mod download $module@$PROMETHEUS_OPERATOR_VERSION)"
  printf '%s' "$crd"
}

# The defaults are checked on a cluster without the ServiceMonitor CRD. One this check installed
# and a killed run left behind is removed; one installed by someone else is theirs, so the check
# stops and says so.
require_no_servicemonitor_crd() {
  k get crd "$SERVICEMONITOR_CRD" >/dev/null 2>&1 || return 0
  if [[ -n $(k get crd -l "$CRD_OWNER_LABEL" --field-selector "metadata.name=$SERVICEMONITOR_CRD" -o name 2>/dev/null) ]]; then
    log "removing the ServiceMonitor CRD an earlier install-check left"
    remove_servicemonitor_crd
    return
  fi
  fail "crd/$SERVICEMONITOR_CRD is installed in $CLUSTER_DIR's cluster, and not by this check: the default bundles must be checked on a cluster without it; delete it ($KUBECTL --kubeconfig $KUBECONFIG_FILE delete crd $SERVICEMONITOR_CRD) or use another cluster"
}

install_servicemonitor_crd() {
  k apply --server-side -f "$SERVICEMONITOR_CRD_FILE" >/dev/null
  k label --overwrite crd "$SERVICEMONITOR_CRD" "$CRD_OWNER_LABEL" >/dev/null
  wait_for_condition k Established 60 "crd/$SERVICEMONITOR_CRD"
  log "installed prometheus-operator $PROMETHEUS_OPERATOR_VERSION's ServiceMonitor CRD"
}

# Only ever the CRD this check installed (its label), so cleanup cannot take someone else's.
remove_servicemonitor_crd() {
  k delete crd -l "$CRD_OWNER_LABEL" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 ||
    log "warning: crd/$SERVICEMONITOR_CRD was not deleted within 60s"
}

# $1 namespace, then the ServiceMonitors' names: each exists and selects a Service of that
# namespace that has the port it scrapes.
check_servicemonitors() {
  local namespace=$1 monitor selector port services; shift
  for monitor in "$@"; do
    # shellcheck disable=SC2016 # a Go template, for kubectl
    selector=$(k get servicemonitor "$monitor" -n "$namespace" \
      -o go-template='{{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}') ||
      fail "servicemonitor/$monitor was not created in $namespace"
    selector=${selector%,}
    port=$(k get servicemonitor "$monitor" -n "$namespace" -o jsonpath='{.spec.endpoints[0].port}')
    [[ -n $selector && -n $port ]] || fail "servicemonitor/$monitor in $namespace has no selector or endpoint port"
    services=$(k get services -n "$namespace" -l "$selector" \
      -o jsonpath="{range .items[?(@.spec.ports[*].name==\"$port\")]}{.metadata.name}{\" \"}{end}")
    [[ -n $services ]] ||
      fail "servicemonitor/$monitor in $namespace selects no Service ($selector) with a port named $port"
    log "$namespace: servicemonitor/$monitor scrapes port $port of service ${services% }"
  done
}

note_api_service_takeover() {
  if k get apiservice "$API_SERVICE" >/dev/null 2>&1; then
    log "taking over $API_SERVICE (another run left it on this cluster); it is deleted at the end"
  fi
}

# The objects of a rendered bundle as "Kind name", sorted.
bundle_objects() {
  k apply --dry-run=client -f "$1" -o jsonpath='{range .items[*]}{.kind} {.metadata.name}{"\n"}{end}' | sort
}

check_kustomize() {
  local started=$SECONDS
  note_api_service_takeover
  gone crd "$SERVICEMONITOR_CRD" || fail "the default bundle is to be checked without crd/$SERVICEMONITOR_CRD"
  k kustomize "$REPO_ROOT/config/default" >"$WORK/kustomize.yaml"
  if grep -q '^apiVersion: monitoring.coreos.com/' "$WORK/kustomize.yaml"; then
    fail "config/default renders prometheus-operator objects; they belong in config/prometheus only"
  fi
  # A server-side dry run of namespaced objects needs their namespace to exist.
  k apply --server-side -f "$REPO_ROOT/config/default/namespace.yaml" >/dev/null
  echo "Namespace $KUSTOMIZE_NAMESPACE" >"$WORK/kustomize.objects"
  # The README's command, on a cluster without prometheus-operator.
  k apply --server-side -k "$REPO_ROOT/config/default" --force-conflicts --dry-run=server >"$WORK/kustomize-dry-run.txt" ||
    fail "kubectl apply --server-side -k config/default --dry-run=server was refused"
  # --force-conflicts: the CRD and the APIService may already be owned by e2e's or the demo's apply.
  k apply --server-side -k "$REPO_ROOT/config/default" --force-conflicts \
    -o jsonpath='{range .items[*]}{.kind} {.metadata.name} {.metadata.namespace}{"\n"}{end}' \
    >"$WORK/kustomize.objects" || fail "kubectl apply --server-side -k config/default was refused"
  log "kustomize: without the ServiceMonitor CRD, the API server accepted config/default's $(wc -l <"$WORK/kustomize.objects") objects (dry run, then for real)"

  check_workloads "$KUSTOMIZE_NAMESPACE" model-operator node-agent model-operator-activator
  check_pod_security "$KUSTOMIZE_NAMESPACE"
  awk '$1 == "ClusterRole" || $1 == "Role"' "$WORK/kustomize.objects" | check_no_wildcards
  check_agent_writes_nothing "$KUSTOMIZE_NAMESPACE" node-agent
  check_operator_rbac "$KUSTOMIZE_NAMESPACE" model-operator node-agent kustomize model-operator-activator
  check_activator_rbac "$KUSTOMIZE_NAMESPACE" model-operator-activator kustomize

  # The opt-in overlay: the same objects plus the two ServiceMonitors, applied over the default.
  install_servicemonitor_crd
  k kustomize "$REPO_ROOT/config/prometheus" >"$WORK/kustomize-prometheus.yaml"
  local added
  added=$(comm -13 <(bundle_objects "$WORK/kustomize.yaml") <(bundle_objects "$WORK/kustomize-prometheus.yaml") | tr '\n' ' ')
  [[ $added == "ServiceMonitor model-operator ServiceMonitor node-agent " ]] ||
    fail "config/prometheus should add the two ServiceMonitors to config/default; it adds: ${added:-nothing}"
  [[ -z $(comm -23 <(bundle_objects "$WORK/kustomize.yaml") <(bundle_objects "$WORK/kustomize-prometheus.yaml")) ]] ||
    fail "config/prometheus leaves out objects of config/default"
  k apply --server-side -k "$REPO_ROOT/config/prometheus" --force-conflicts \
    -o jsonpath='{range .items[*]}{.kind} {.metadata.name} {.metadata.namespace}{"\n"}{end}' \
    >"$WORK/kustomize.objects" || fail "kubectl apply --server-side -k config/prometheus was refused"
  check_servicemonitors "$KUSTOMIZE_NAMESPACE" model-operator node-agent
  log "kustomize: with the ServiceMonitor CRD, config/prometheus applied over config/default"

  delete_kustomize_install
  remove_servicemonitor_crd
  gone namespace "$KUSTOMIZE_NAMESPACE" || fail "namespace $KUSTOMIZE_NAMESPACE is still there after deleting it"
  gone apiservice "$API_SERVICE" || fail "apiservice $API_SERVICE is still there after deleting it"
  gone clusterrole model-operator || fail "clusterrole model-operator is still there after deleting it"
  k get crd "$MODEL_CRD" >/dev/null || fail "the ModelDeployment CRD must survive the cleanup"
  log "kustomize: checked and removed in $((SECONDS - started))s"
}

# The helm tests/cluster/build.sh built behaves as a released one: the pinned version, and the
# chart renders without --kube-version (a helm without a release's version metadata assumes
# Kubernetes 1.20 and refuses the chart's kubeVersion).
check_helm_binary() {
  local version
  version=$(helm_ version --template '{{.Version}}')
  [[ $version == "$HELM_VERSION" ]] ||
    fail "$HELM reports version '$version', not the pinned $HELM_VERSION (rebuild: tests/cluster/build.sh helm)"
  helm_ template "$HELM_RELEASE" "$REPO_ROOT/charts/model-operator" >"$WORK/helm-template-default.yaml" 2>&1 ||
    fail "helm template charts/model-operator (without --kube-version) failed: $(head -c 400 "$WORK/helm-template-default.yaml")"
  grep -q '^kind: Deployment$' "$WORK/helm-template-default.yaml" ||
    fail "helm template charts/model-operator (without --kube-version) rendered no Deployment"
  log "helm: $HELM reports $version and renders the chart without --kube-version"
}

check_helm() {
  local started=$SECONDS chart="$REPO_ROOT/charts/model-operator"
  check_helm_binary
  helm_ lint --strict "$chart" >"$WORK/helm-lint.txt" || { cat "$WORK/helm-lint.txt" >&2; fail "helm lint failed"; }

  # Rendering: the defaults (ServiceMonitors opt-in), the monitors turned on, every part turned off.
  helm_ template "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" >"$WORK/helm-template.yaml"
  for kind in Deployment DaemonSet APIService ClusterRole; do
    grep -q "^kind: $kind$" "$WORK/helm-template.yaml" || fail "helm template rendered no $kind"
  done
  if grep -q '^kind: ServiceMonitor$' "$WORK/helm-template.yaml"; then
    fail "helm template rendered a ServiceMonitor by default; serviceMonitor.enabled must be opt-in"
  fi
  [[ $(helm_ template "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" --set serviceMonitor.enabled=true |
    grep -c '^kind: ServiceMonitor$') == 2 ]] || fail "helm template --set serviceMonitor.enabled=true rendered no two ServiceMonitors"
  helm_ template "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" \
    --set nodeAgent.enabled=false,customMetrics.enabled=false,serviceMonitor.enabled=false,rbac.create=false \
    >"$WORK/helm-template-minimal.yaml"
  for kind in DaemonSet APIService ServiceMonitor ClusterRole Role; do
    if grep -q "^kind: $kind$" "$WORK/helm-template-minimal.yaml"; then
      fail "helm template rendered a $kind although its part is turned off"
    fi
  done

  note_api_service_takeover
  gone crd "$SERVICEMONITOR_CRD" || fail "the chart's defaults are to be checked without crd/$SERVICEMONITOR_CRD"
  k create namespace "$HELM_NAMESPACE" --dry-run=client -o yaml | k apply --server-side -f - >/dev/null
  helm_ install "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" \
    --dry-run=server >"$WORK/helm-dry-run.yaml" || fail "helm install --dry-run=server was refused"
  # The APIService may be owned by e2e's or the demo's apply, and Helm refuses to adopt an object
  # it did not create: it goes first (it is this test's to take over while it holds the lock).
  k delete apiservice "$API_SERVICE" --ignore-not-found >/dev/null
  helm_ install "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" \
    --wait --timeout "${WAIT_S}s" >"$WORK/helm-install.txt" || fail "helm install was refused or did not become ready"
  log "helm: without the ServiceMonitor CRD, release $HELM_RELEASE installed in $HELM_NAMESPACE with the chart's defaults"

  local fullname="$HELM_RELEASE-model-operator"
  check_workloads "$HELM_NAMESPACE" "$fullname" "$fullname-node-agent" "$fullname-activator"
  check_pod_security "$HELM_NAMESPACE"
  printf '%s\n' "ClusterRole $fullname" "ClusterRole $fullname-custom-metrics-reader" "ClusterRole $fullname-activator" \
    "Role $fullname $HELM_NAMESPACE" |
    check_no_wildcards
  check_agent_writes_nothing "$HELM_NAMESPACE" "$fullname-node-agent"
  check_operator_rbac "$HELM_NAMESPACE" "$fullname" "$fullname-node-agent" helm "$fullname-activator"
  check_activator_rbac "$HELM_NAMESPACE" "$fullname-activator" helm

  install_servicemonitor_crd
  helm_ upgrade "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" --reuse-values \
    --set serviceMonitor.enabled=true --wait --timeout "${WAIT_S}s" >"$WORK/helm-upgrade.txt" ||
    fail "helm upgrade --set serviceMonitor.enabled=true was refused"
  check_servicemonitors "$HELM_NAMESPACE" "$fullname" "$fullname-node-agent"
  log "helm: with the ServiceMonitor CRD, serviceMonitor.enabled=true added the monitors"

  check_helm_namespaced "$chart" "$fullname"

  delete_helm_install
  gone namespace "$HELM_NAMESPACE" || fail "namespace $HELM_NAMESPACE is still there after deleting it"
  gone apiservice "$API_SERVICE" || fail "apiservice $API_SERVICE is still there after helm uninstall"
  gone clusterrole "$fullname" || fail "clusterrole $fullname is still there after helm uninstall"
  k get crd "$MODEL_CRD" >/dev/null || fail "helm uninstall must leave the ModelDeployment CRD"
  log "helm: checked and removed in $((SECONDS - started))s"
}

# A namespaced install (operator.watchNamespace): the operator's grants on models, children, pods
# and Events are a Role in the watched namespace, and the only cluster-wide grants left are reading
# nodes and what DRA publishes cluster-wide (ResourceSlices, DeviceClasses). The real operator, as that ServiceAccount, must do everything it does with no more.
check_helm_namespaced() {
  local chart=$1 fullname=$2
  local MODEL_NAMESPACE=$NAMESPACED_MODEL_NAMESPACE
  k create namespace "$MODEL_NAMESPACE" >/dev/null
  helm_ upgrade "$HELM_RELEASE" "$chart" --namespace "$HELM_NAMESPACE" --reuse-values \
    --set operator.watchNamespace="$MODEL_NAMESPACE" --wait --timeout "${WAIT_S}s" >"$WORK/helm-namespaced.txt" ||
    fail "helm upgrade --set operator.watchNamespace=$MODEL_NAMESPACE was refused"
  gone clusterrole "$fullname" || fail "a namespaced install still has the cluster-wide ClusterRole $fullname"
  gone clusterrole "$fullname-activator" || fail "a namespaced install still has the cluster-wide ClusterRole $fullname-activator"
  k get role "$fullname" -n "$MODEL_NAMESPACE" >/dev/null || fail "a namespaced install has no Role in $MODEL_NAMESPACE"
  local cluster_wide
  cluster_wide=$(k get clusterrole "$fullname-nodes" -o jsonpath='{range .rules[*]}{.resources}{" "}{.verbs}{"\n"}{end}')
  [[ $cluster_wide == $'["nodes"] ["list","watch"]\n["resourceslices","deviceclasses"] ["list","watch"]' ]] ||
    fail "a namespaced install grants more than reading nodes, ResourceSlices and DeviceClasses cluster-wide: $cluster_wide"
  printf '%s\n' "ClusterRole $fullname-nodes" "Role $fullname $MODEL_NAMESPACE" "Role $fullname-activator $MODEL_NAMESPACE" | check_no_wildcards
  check_operator_rbac "$HELM_NAMESPACE" "$fullname" "$fullname-node-agent" helm-namespaced "$fullname-activator"
  check_activator_rbac "$HELM_NAMESPACE" "$fullname-activator" helm-namespaced
  log "helm: a namespaced install (Role in $MODEL_NAMESPACE; nodes, ResourceSlices, DeviceClasses read-only) is enough for the operator"
}

main() {
  command -v curl >/dev/null || fail "curl is required"
  command -v flock >/dev/null || fail "flock (util-linux) is required"
  exec 9>"$CLUSTER_LOCK"
  if ! flock -n 9; then
    log "waiting for the cluster lock $CLUSTER_LOCK (another run is using the cluster in $CLUSTER_DIR)"
    flock -w "$LOCK_WAIT_S" 9 || fail "waited ${LOCK_WAIT_S}s for $CLUSTER_LOCK; is a run on that cluster stuck?"
  fi
  local started=$SECONDS
  trap cleanup EXIT

  # Starts the cluster if needed, keeping the running controller manager's HPA sync period. The
  # lock's descriptor is not passed on: the cluster's processes outlive this check.
  HPA_SYNC_PERIOD=${HPA_SYNC_PERIOD:-$(cat "$CLUSTER_DIR/hpa-sync-period" 2>/dev/null || echo 15s)} \
    "$CLUSTER_SCRIPTS/up.sh" 9>&-
  [[ -x $KUBECTL && -x $HELM ]] || fail "no kubectl or helm in $CLUSTER_DIR/bin (tests/cluster/up.sh links them)"
  OPERATOR_BIN=$(operator_binary)
  SERVICEMONITOR_CRD_FILE=$(servicemonitor_crd_file)
  for leftover in "$KUSTOMIZE_NAMESPACE" "$HELM_NAMESPACE" "$MODEL_NAMESPACE" "$NAMESPACED_MODEL_NAMESPACE"; do
    gone namespace "$leftover" || fail "namespace $leftover already exists: a previous run's leftover? delete it first"
  done
  require_no_servicemonitor_crd

  check_kustomize
  check_helm
  log "install-check passed in $((SECONDS - started))s"
}

main "$@"
