#!/usr/bin/env bash
# The kubebuilder-style make targets that act on the current kubeconfig's cluster or build the
# images: `make install|uninstall|deploy|undeploy|docker-build|docker-push`, and the context check
# of `make run`.
#
# Usage: deploy.sh install | uninstall         the ModelDeployment CRD
#        deploy.sh render | deploy | undeploy  the bundle (DEPLOY_CONFIG, default config/default)
#        deploy.sh docker-build | docker-push  the operator and node-agent images
#        deploy.sh context                     check and name the cluster the kubeconfig points at
#
# Env: IMG        the operator image (default: the one config/manager names). Also the model-fetch
#                 init container's image (FETCHER_IMAGE), as in the Helm chart: it is the operator's.
#      AGENT_IMG  the node agent image (default: IMG's repository with -node-agent, IMG's tag; or
#                 the one config/node-agent names when IMG is unset).
#      KUBECTL    (default: kubectl on PATH, else the one tests/cluster/build.sh built);
#      KUBECONFIG (kubectl's: the current context is the target).
#      CONTAINER_TOOL (default docker; podman takes the same arguments).
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/../tests/cluster/lib.sh"

CRD_FILE="$REPO_ROOT/crds/modeldeployments.mlops.sathvik.dev.yaml"
DEPLOY_CONFIG=${DEPLOY_CONFIG:-config/default}
FIELD_MANAGER=model-operator-deploy
CONTAINER_TOOL=${CONTAINER_TOOL:-docker}
OPERATOR_NAMESPACE=model-operator-system

# The image a committed manifest names (its first `image:` line).
committed_image() {
  local image
  image=$(sed -n 's/^ *image: *\([^ ]*\) *$/\1/p' "$REPO_ROOT/$1" | head -n 1)
  [[ -n $image ]] || die "no image: line in $1"
  printf '%s' "$image"
}

# Splits an image reference into "NAME TAG" or "NAME @DIGEST": the tag is after the last ':' that
# follows the last '/', so a registry's port (localhost:5000/x) is not taken for one.
split_image() {
  local ref=$1 what=$2
  if [[ $ref == *@* ]]; then
    printf '%s @%s' "${ref%%@*}" "${ref#*@}"
    return
  fi
  local last=${ref##*/}
  [[ $last == *:* ]] ||
    die "$what=$ref has no tag: name one (e.g. $what=$ref:dev), or the bundle's tag would stay"
  printf '%s %s' "${ref%:*}" "${last##*:}"
}

# Sets the images and their "NAME TAG" splits, or stops on a reference without a tag. Called at
# the top level: a `die` inside $(...) would end only that subshell.
resolve_images() {
  BUNDLE_OPERATOR_IMAGE=$(committed_image config/manager/deployment.yaml)
  BUNDLE_AGENT_IMAGE=$(committed_image config/node-agent/daemonset.yaml)
  BUNDLE_OPERATOR_PARTS=$(split_image "$BUNDLE_OPERATOR_IMAGE" config/manager)
  BUNDLE_AGENT_PARTS=$(split_image "$BUNDLE_AGENT_IMAGE" config/node-agent)
  OPERATOR_IMAGE=${IMG:-$BUNDLE_OPERATOR_IMAGE}
  OPERATOR_PARTS=$(split_image "$OPERATOR_IMAGE" IMG)
  if [[ -n ${AGENT_IMG:-} ]]; then
    AGENT_IMAGE=$AGENT_IMG
  elif [[ -n ${IMG:-} ]]; then
    local name tag
    read -r name tag <<<"$OPERATOR_PARTS"
    [[ $tag != @* ]] || die "IMG=$IMG is a digest, which the node agent's image cannot share: set AGENT_IMG too"
    AGENT_IMAGE="$name-node-agent:$tag"
  else
    AGENT_IMAGE=$BUNDLE_AGENT_IMAGE
  fi
  AGENT_PARTS=$(split_image "$AGENT_IMAGE" AGENT_IMG)
}

resolve_kubectl() {
  if [[ -n ${KUBECTL:-} ]]; then
    command -v "$KUBECTL" >/dev/null || die "KUBECTL=$KUBECTL is not an executable"
    KUBECTL_BIN=$KUBECTL
  elif command -v kubectl >/dev/null; then
    KUBECTL_BIN=kubectl
  elif [[ -x $K8S_HOME/bin/kubectl ]]; then
    KUBECTL_BIN=$K8S_HOME/bin/kubectl
  else
    die "no kubectl on PATH and none built in $K8S_HOME/bin (make cluster-build builds one); or set KUBECTL"
  fi
}

k() { "$KUBECTL_BIN" "$@"; }

# Fails unless the kubeconfig has a current context, instead of kubectl's "connection to the
# server localhost:8080 was refused"; names the cluster everything then goes to.
require_context() {
  local context server
  context=$(k config current-context 2>/dev/null) ||
    die "no current context in ${KUBECONFIG:-$HOME/.kube/config}: set KUBECONFIG (the demo's cluster: export KUBECONFIG=$REPO_ROOT/.cluster/kubeconfig)"
  server=$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2>/dev/null || true)
  log "cluster: context $context${server:+ ($server)}"
}

# $1 "NAME TAG" of the bundle's image, $2 "NAME TAG" or "NAME @DIGEST" to use instead.
image_override() {
  local from to tag
  read -r from _ <<<"$1"
  read -r to tag <<<"$2"
  printf '  - name: %s\n    newName: %s\n' "$from" "$to"
  if [[ $tag == @* ]]; then printf '    digest: %s\n' "${tag#@}"; else printf '    newTag: "%s"\n' "$tag"; fi
}

# The bundle with the images set, as `kustomize edit set image` would in a copy: an overlay in a
# scratch directory (kustomize takes only relative paths to a base), so no committed file changes.
render() {
  [[ -e $REPO_ROOT/$DEPLOY_CONFIG/kustomization.yaml ]] ||
    die "DEPLOY_CONFIG=$DEPLOY_CONFIG has no kustomization.yaml (config/default, or config/prometheus with the ServiceMonitors)"
  local overlay status=0
  overlay=$(mktemp -d)
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n'
    printf '  - %s\n' "$(realpath --relative-to="$overlay" "$REPO_ROOT/$DEPLOY_CONFIG")"
    printf 'images:\n'
    image_override "$BUNDLE_OPERATOR_PARTS" "$OPERATOR_PARTS"
    image_override "$BUNDLE_AGENT_PARTS" "$AGENT_PARTS"
    printf '%s\n' 'patches:' '  - patch: |-' \
      '      apiVersion: apps/v1' \
      '      kind: Deployment' \
      "      metadata: {name: model-operator, namespace: $OPERATOR_NAMESPACE}" \
      '      spec:' \
      '        template:' \
      '          spec:' \
      '            containers:' \
      '              - name: operator' \
      '                env:' \
      "                  - {name: FETCHER_IMAGE, value: \"$OPERATOR_IMAGE\"}"
  } >"$overlay/kustomization.yaml"
  k kustomize "$overlay" || status=$?
  rm -rf "$overlay"
  ((status == 0)) || die "kubectl kustomize $DEPLOY_CONFIG with the image overrides failed"
}

install_crd() {
  require_context
  k apply --server-side --field-manager="$FIELD_MANAGER" -f "$CRD_FILE"
  wait_for_condition k Established 60 crd/modeldeployments.mlops.sathvik.dev
}

uninstall_crd() {
  require_context
  log "deleting the CRD, and with it every ModelDeployment and what the operator made for them"
  k delete -f "$CRD_FILE" --ignore-not-found --wait=true
}

deploy() {
  require_context
  log "deploying $DEPLOY_CONFIG: operator image $OPERATOR_IMAGE, node agent image $AGENT_IMAGE"
  local rendered
  rendered=$(render)
  k apply --server-side --field-manager="$FIELD_MANAGER" -f - <<<"$rendered"
  k rollout status deployment/model-operator --namespace "$OPERATOR_NAMESPACE" --timeout=300s
}

# Everything the bundle made, the CRD included, as kubebuilder's undeploy. The APIService goes
# first: while it names an operator that is gone, the namespace cannot finish deleting.
undeploy() {
  require_context
  local rendered
  rendered=$(render)
  k delete apiservice v1beta2.custom.metrics.k8s.io --ignore-not-found --wait=true
  log "deleting $DEPLOY_CONFIG, the CRD with it: every ModelDeployment goes"
  k delete -f - --ignore-not-found --wait=true <<<"$rendered"
}

# Stops with what to do where no engine answers (a machine with only the client).
require_engine() {
  command -v "$CONTAINER_TOOL" >/dev/null ||
    die "$CONTAINER_TOOL not found (CONTAINER_TOOL=$CONTAINER_TOOL); 'make release-build' builds the images' binaries without it"
  local answer
  if ! answer=$("$CONTAINER_TOOL" info 2>&1 >/dev/null); then
    die "'$CONTAINER_TOOL info' found no engine (${answer%%$'\n'*}); start one or point $CONTAINER_TOOL at one (DOCKER_HOST); 'make release-build' builds the images' binaries without one"
  fi
}

docker_build() {
  require_engine
  # The Dockerfile's cache mounts need BuildKit.
  DOCKER_BUILDKIT=1 "$CONTAINER_TOOL" build --target operator -t "$OPERATOR_IMAGE" "$REPO_ROOT"
  DOCKER_BUILDKIT=1 "$CONTAINER_TOOL" build --target node-agent -t "$AGENT_IMAGE" "$REPO_ROOT"
}

docker_push() {
  require_engine
  "$CONTAINER_TOOL" push "$OPERATOR_IMAGE"
  "$CONTAINER_TOOL" push "$AGENT_IMAGE"
}

main() {
  resolve_images
  case ${1:-} in
    install | uninstall | render | deploy | undeploy | context) resolve_kubectl ;;
    docker-build | docker-push) ;;
    *) die "usage: deploy.sh install|uninstall|render|deploy|undeploy|docker-build|docker-push|context (got '${1:-}')" ;;
  esac
  case $1 in
    install) install_crd ;;
    uninstall) uninstall_crd ;;
    render) render ;;
    deploy) deploy ;;
    undeploy) undeploy ;;
    docker-build) docker_build ;;
    docker-push) docker_push ;;
    context) require_context ;;
  esac
}

main "$@"
