#!/usr/bin/env bash
# Starts the local control plane (DESIGN.md §6, tier 3): etcd, kube-apiserver with the aggregation
# layer, kube-controller-manager, kube-scheduler and kwok managing the fake GPU nodes of
# tests/cluster/nodes.yaml, all as detached processes on 127.0.0.1. Builds the binaries first (cached).
#
# Idempotent: a live, healthy cluster in $CLUSTER_DIR is left running; leftovers of a dead one are
# cleaned up before a fresh start.
#
# Env: CLUSTER_DIR (default <repo>/.cluster), CLUSTER_PORT_OFFSET (lib.sh: which set of loopback ports;
# default 0, or what the cluster in CLUSTER_DIR was started with), HPA_SYNC_PERIOD (default 15s, the
# Kubernetes default).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

HPA_SYNC_PERIOD=${HPA_SYNC_PERIOD:-15s}
# A Go duration as kube-controller-manager parses it; checked here so a typo fails with a clear message
# instead of a controller-manager that exits at start.
[[ $HPA_SYNC_PERIOD =~ ^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$ ]] ||
  die "HPA_SYNC_PERIOD='$HPA_SYNC_PERIOD' is not a duration such as 15s, 2s or 500ms"

PKI="$CLUSTER_DIR/pki"
PIDS="$CLUSTER_DIR/pids"
LOGS="$CLUSTER_DIR/logs"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
KUBECTL="$CLUSTER_DIR/bin/kubectl"
# Components in start order; cluster-down stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
declare -A COMPONENT_PORTS=(
  [etcd]="$ETCD_CLIENT_PORT $ETCD_PEER_PORT"
  [kube-apiserver]=$APISERVER_PORT
  [kube-controller-manager]=$KCM_PORT
  [kube-scheduler]=$SCHEDULER_PORT
  [kwok]=$KWOK_PORT
)
START_TIMEOUT_S=${CLUSTER_START_TIMEOUT_S:-120}

kubectl_admin() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

pid_of() { [[ -s "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid"; }

is_running() {
  local pid
  pid=$(pid_of "$1") || return 1
  process_alive "$pid"
}

apiserver_ready() {
  [[ -s "$PKI/admin.crt" ]] || return 1
  [[ "$(curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null)" == ok ]]
}

# Healthy = every component process alive and the API server ready. Node readiness is not required
# here: a cluster whose nodes went NotReady is still reused, and the wait below reports them.
cluster_is_healthy() {
  for component in "${COMPONENTS[@]}"; do is_running "$component" || return 1; done
  apiserver_ready
}

# Fails naming the port and the process holding it: the usual symptom of another cluster on the same
# port set (another checkout's, or one started by hand with the same CLUSTER_PORT_OFFSET).
require_free_ports() {
  for component in "${COMPONENTS[@]}"; do
    for port in ${COMPONENT_PORTS[$component]}; do
      local holder
      holder=$(ss -Htlnp "sport = :$port" 2>/dev/null)
      holder=${holder%%$'\n'*}
      if [[ -n $holder ]]; then
        local process
        process=$(grep -o 'users:(([^)]*))' <<<"$holder" || echo "an unknown process")
        die "port $port (needed by $component) is already in use by $process, another cluster on port offset $CLUSTER_PORT_OFFSET?; stop it (its checkout's 'make cluster-down') or give this one another CLUSTER_PORT_OFFSET (a multiple of 100 up to 1900)"
      fi
    done
  done
}

# Polls "$@" once a second until it succeeds; fails early when $component has exited, showing its log.
wait_for() {
  local component=$1 what=$2; shift 2
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    if ! is_running "$component"; then
      tail -n 30 "$LOGS/$component.log" >&2 || true
      die "$component exited while waiting for $what; full log: $LOGS/$component.log"
    fi
    ((SECONDS < deadline)) || die "timed out after ${START_TIMEOUT_S}s waiting for $what; logs in $LOGS"
    sleep 1
  done
  log "$what"
}

# Writes one certificate signed by the given CA (or self-signed when the CA is the cert itself).
# Extensions come only from the extension text, so every certificate carries exactly what it needs.
issue_cert() {
  local name=$1 subject=$2 extensions=$3 ca=${4:-}
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr"
  printf '%s\n' "$extensions" >"$PKI/$name.ext"
  if [[ -z $ca ]]; then
    openssl x509 -req -in "$PKI/$name.csr" -signkey "$PKI/$name.key" -days 3650 -sha256 \
      -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  else
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
      -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  fi
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

generate_pki() {
  mkdir -p "$PKI" && chmod 700 "$PKI"
  local ca_ext='basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier=hash'
  local client_ext='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid'
  issue_cert ca "/CN=model-operator-local-ca" "$ca_ext"
  # 10.0.0.1 is the `kubernetes` Service's ClusterIP in --service-cluster-ip-range, which in-cluster
  # clients use; loopback is what everything here actually dials.
  issue_cert apiserver "/CN=kube-apiserver" 'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local' ca
  issue_cert admin "/O=system:masters/CN=admin" "$client_ext" ca
  # The aggregation layer trusts a separate CA: the API server presents the front-proxy client cert to
  # aggregated API servers, which verify it against the requestheader CA it publishes in
  # kube-system/extension-apiserver-authentication.
  issue_cert front-proxy-ca "/CN=model-operator-front-proxy-ca" "$ca_ext"
  issue_cert front-proxy-client "/CN=front-proxy-client" "$client_ext" front-proxy-ca
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

write_kubeconfig() {
  local ca cert key
  ca=$(base64 -w0 "$PKI/ca.crt")
  cert=$(base64 -w0 "$PKI/admin.crt")
  key=$(base64 -w0 "$PKI/admin.key")
  umask 077
  cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: model-operator-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: admin
  user:
    client-certificate-data: $cert
    client-key-data: $key
contexts:
- name: model-operator-local
  context:
    cluster: model-operator-local
    user: admin
    namespace: default
current-context: model-operator-local
EOF
  umask 022
}

# One file for kwok's --config: the KwokConfiguration and the stages that make nodes Ready, heartbeat
# them through Leases, and move pods to Running/Ready, Succeeded or Failed (Jobs) and gone (deletion).
write_kwok_config() {
  {
    cat <<'EOF'
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: true
  cidr: 10.244.0.0/16
  nodeIP: 10.1.0.1
  nodeLeaseDurationSeconds: 40
  # kwok applies its defaults only when no KwokConfiguration is given, so these are spelled out (its
  # own defaults) or it exits with "node leases parallelism must be greater than 0".
  nodeLeaseParallelism: 4
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 4
  podsOnNodeSyncParallelism: 1
  enablePodsOnNodeSyncListPager: true
  enablePodsOnNodeSyncStreamWatch: false
EOF
    # kwok's stages, except pod-complete: ours in stages/ finish Job pods with a result a test
    # can choose.
    for stage in "$KWOK_HOME"/stages/*.yaml "$CLUSTER_SCRIPTS"/stages/*.yaml; do
      [[ $(basename "$stage") != pod-complete.yaml ]] || continue
      printf -- '---\n'
      cat "$stage"
    done
  } >"$CLUSTER_DIR/kwok.yaml"
}

# Sourceable summary for tests and scripts that use the cluster.
write_cluster_env() {
  cat >"$CLUSTER_DIR/cluster.env" <<EOF
# Written by tests/cluster/up.sh; describes the running local cluster.
KUBECONFIG=$KUBECONFIG_FILE
KUBECTL=$KUBECTL
HELM=$CLUSTER_DIR/bin/helm
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
CLUSTER_CA=$PKI/ca.crt
FRONT_PROXY_CA=$PKI/front-proxy-ca.crt
FRONT_PROXY_CLIENT_CN=front-proxy-client
HPA_SYNC_PERIOD=$HPA_SYNC_PERIOD
K8S_VERSION=$K8S_VERSION
CLUSTER_PORT_OFFSET=$CLUSTER_PORT_OFFSET
CLUSTER_LOCK=$CLUSTER_LOCK
EOF
}

start_etcd() {
  start_detached etcd "$ETCD_HOME/bin/etcd" \
    --name=model-operator-local \
    --data-dir="$CLUSTER_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="model-operator-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level=warn
  wait_for etcd "etcd healthy on 127.0.0.1:$ETCD_CLIENT_PORT" \
    curl -sf --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_apiserver() {
  start_detached kube-apiserver "$K8S_HOME/bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --cert-dir="$PKI" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --authorization-mode=RBAC \
    --service-account-issuer="https://127.0.0.1:$APISERVER_PORT/" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --endpoint-reconciler-type=none \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --audit-policy-file="$(cd "$(dirname "$0")" && pwd)/audit-policy.yaml" \
    --audit-log-path="$LOGS/audit.log" \
    --audit-log-maxsize=200 \
    --audit-log-maxbackup=1
  wait_for kube-apiserver "kube-apiserver ready on https://127.0.0.1:$APISERVER_PORT" apiserver_ready
}

start_controller_manager() {
  start_detached kube-controller-manager "$K8S_HOME/bin/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --authentication-kubeconfig="$KUBECONFIG_FILE" \
    --authorization-kubeconfig="$KUBECONFIG_FILE" \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --cert-dir="$CLUSTER_DIR/kube-controller-manager" \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --controllers='*' \
    --horizontal-pod-autoscaler-sync-period="$HPA_SYNC_PERIOD" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics
  echo "$HPA_SYNC_PERIOD" >"$CLUSTER_DIR/hpa-sync-period"
}

start_scheduler() {
  start_detached kube-scheduler "$K8S_HOME/bin/kube-scheduler" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --authentication-kubeconfig="$KUBECONFIG_FILE" \
    --authorization-kubeconfig="$KUBECONFIG_FILE" \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHEDULER_PORT"
}

start_kwok() {
  start_detached kwok "$KWOK_HOME/bin/kwok" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --config="$CLUSTER_DIR/kwok.yaml" \
    --manage-all-nodes=true \
    --server-address="127.0.0.1:$KWOK_PORT"
}

component_healthy() {
  curl -skf --max-time 2 "https://127.0.0.1:$1/healthz"
}

# The nodes of nodes.yaml by name: tests and benches add nodes of their own beside them.
fake_node_names() {
  awk '/^kind: Node$/ { node = 1 } node && /^  name: / { print $2; node = 0 }' "$CLUSTER_SCRIPTS/nodes.yaml"
}

nodes_ready() {
  local names ready
  mapfile -t names < <(fake_node_names)
  ready=$(kubectl_admin get nodes "${names[@]}" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -cx True)
  [[ $ready -eq ${#names[@]} ]]
}

# The fake nodes, then the DRA nodes' GPUs (DeviceClasses and ResourceSlices): applied on every
# start, so a running cluster from before a node was added to the files gets it too.
apply_fake_nodes() {
  kubectl_admin apply -f "$CLUSTER_SCRIPTS/nodes.yaml" >/dev/null
  kubectl_admin apply -f "$CLUSTER_SCRIPTS/dra-devices.yaml" >/dev/null
  wait_for kwok "all fake nodes Ready" nodes_ready
}

link_tools() {
  mkdir -p "$CLUSTER_DIR/bin"
  ln -sfn "$K8S_HOME/bin/kubectl" "$CLUSTER_DIR/bin/kubectl"
  ln -sfn "$HELM_HOME/bin/helm" "$CLUSTER_DIR/bin/helm"
}

# A running cluster keeps its controller manager unless the caller asks for another HPA sync period
# (tests want a short one, `make demo` the default); then only that component restarts.
reconcile_hpa_sync_period() {
  local running
  running=$(cat "$CLUSTER_DIR/hpa-sync-period" 2>/dev/null || echo unknown)
  [[ $running != "$HPA_SYNC_PERIOD" ]] || return 0
  log "restarting kube-controller-manager: HPA sync period $running -> $HPA_SYNC_PERIOD"
  "$CLUSTER_SCRIPTS/down.sh" --only kube-controller-manager
  start_controller_manager
  wait_for kube-controller-manager "kube-controller-manager healthy on 127.0.0.1:$KCM_PORT" \
    component_healthy "$KCM_PORT"
  write_cluster_env
}

# A cluster still running in CLUSTER_DIR on another port set would look unhealthy on this one's ports
# and be stopped for a fresh start: refuse instead, naming both offsets.
require_same_port_offset() {
  local recorded
  recorded=$(cat "$CLUSTER_DIR/port-offset" 2>/dev/null) || return 0
  [[ $recorded != "$CLUSTER_PORT_OFFSET" ]] || return 0
  for component in "${COMPONENTS[@]}"; do
    is_running "$component" &&
      die "the cluster in $CLUSTER_DIR runs on CLUSTER_PORT_OFFSET=$recorded, not $CLUSTER_PORT_OFFSET; use its offset, or stop it first (CLUSTER_DIR=$CLUSTER_DIR tests/cluster/down.sh)"
  done
  return 0
}

report_failed_start() {
  (($1 == 0)) && return
  log "cluster-up failed; component logs are in $LOGS; 'make cluster-down' stops what was started"
}

main() {
  command -v openssl >/dev/null || die "openssl is required to generate the cluster certificates"
  command -v curl >/dev/null || die "curl is required to probe the cluster"
  "$CLUSTER_SCRIPTS/build.sh" all

  require_same_port_offset
  if cluster_is_healthy; then
    link_tools
    reconcile_hpa_sync_period
    apply_fake_nodes
    log "cluster in $CLUSTER_DIR is already running and healthy (kubeconfig: $KUBECONFIG_FILE)"
    return
  fi
  if [[ -e $CLUSTER_DIR ]]; then
    log "found a stopped or unhealthy cluster in $CLUSTER_DIR; cleaning it up first"
    "$CLUSTER_SCRIPTS/down.sh"
  fi
  require_free_ports

  local started=$SECONDS
  mkdir -p "$CLUSTER_DIR" "$PIDS" "$LOGS"
  # Marks the directory as ours, so cluster-down only ever deletes a directory this script made.
  touch "$CLUSTER_DIR/.model-operator-cluster"
  # Read back by lib.sh, so the scripts that use this cluster find its ports without being told.
  echo "$CLUSTER_PORT_OFFSET" >"$CLUSTER_DIR/port-offset"
  # A failed start leaves its processes running for inspection; the next cluster-up cleans them up.
  trap 'report_failed_start $?' EXIT
  link_tools
  generate_pki
  write_kubeconfig
  write_kwok_config

  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kwok
  wait_for kube-controller-manager "kube-controller-manager healthy on 127.0.0.1:$KCM_PORT" \
    component_healthy "$KCM_PORT"
  wait_for kube-scheduler "kube-scheduler healthy on 127.0.0.1:$SCHEDULER_PORT" \
    component_healthy "$SCHEDULER_PORT"
  wait_for kwok "kwok healthy on 127.0.0.1:$KWOK_PORT" \
    curl -sf --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz"

  apply_fake_nodes
  wait_for kube-controller-manager "default ServiceAccount created" \
    kubectl_admin get serviceaccount default --namespace default
  write_cluster_env
  log "cluster up in $((SECONDS - started))s; export KUBECONFIG=$KUBECONFIG_FILE (details: $CLUSTER_DIR/cluster.env)"
  kubectl_admin get nodes -L nvidia.com/gpu.product
}

main "$@"
