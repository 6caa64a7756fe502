#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules into version-keyed cache
# directories (REFERENCE.md §1). Each piece is skipped when its binaries already report the pinned
# version, so only the first run on a machine pays for compiling.
#
# Usage: build.sh [k8s|etcd|kwok|helm|all]...   (default: all)
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"

# Every k8s.io staging module that k8s.io/kubernetes pins at v0.0.0 (REFERENCE.md §1.1); each must be
# replaced by its published v0.M.P or module resolution fails with "unknown revision".
K8S_STAGING_MODULES=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller
)
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

# Runs "$@" holding an exclusive lock on $1's build, so two concurrent `make cluster-up` runs (a
# developer and CI on one machine) do not compile the same thing twice or clobber each other.
with_lock() {
  local home=$1; shift
  mkdir -p "$home"
  exec {lock_fd}>"$home/.build.lock"
  flock "$lock_fd"
  "$@"
  flock -u "$lock_fd"
}

# Builds one piece unless its binaries already report the pinned version; logs the cold build time.
build_piece() {
  local piece=$1 what=$2 home=$3
  if "${piece}_is_built"; then log "$what already built in $home"; return; fi
  local start=$SECONDS
  "build_$piece"
  log "$what built in $((SECONDS - start))s"
}

# True when "$@" prints a line matching the glob $1. The output is captured first: piping into
# `grep -q` can fail under pipefail when grep exits before the command has written everything
# (SIGPIPE), which made a built binary look missing and triggered a rebuild.
reports_line() {
  local pattern=$1 output line; shift
  output=$("$@" 2>/dev/null) || return 1
  while IFS= read -r line; do
    # shellcheck disable=SC2053 # the pattern is a glob on purpose
    [[ $line == $pattern ]] && return 0
  done <<<"$output"
  return 1
}

k8s_is_built() {
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$K8S_HOME/bin/$cmd" ]] || return 1
    [[ "$("$K8S_HOME/bin/$cmd" --version 2>/dev/null)" == "Kubernetes $K8S_VERSION" ]] || return 1
  done
  [[ -x "$K8S_HOME/bin/kubectl" ]] || return 1
  reports_line "Client Version: $K8S_VERSION" "$K8S_HOME/bin/kubectl" version --client
}

build_k8s() {
  log "building kubernetes $K8S_VERSION (${K8S_COMMANDS[*]}) into $K8S_HOME/bin; cold takes a while"
  local staging_version="v0.${K8S_VERSION#v1.}"
  local src="$K8S_HOME/src"
  rm -rf "$src" && mkdir -p "$src"
  (
    cd "$src"
    go mod init model-operator.local/k8s-build >/dev/null 2>&1
    for module in "${K8S_STAGING_MODULES[@]}"; do
      go mod edit "-replace=k8s.io/$module=k8s.io/$module@$staging_version"
    done
    local tools=()
    for cmd in "${K8S_COMMANDS[@]}"; do tools+=("k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"); done
    go get -tool "${tools[@]}"
    go mod edit -godebug=default=go1.24
    local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    local pkg=k8s.io/component-base/version
    # Without these the binaries report v0.0.0-master+$Format:%H$ and version parsers break.
    local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    # kubectl reads its version from client-go's copy of the same variables.
    pkg=k8s.io/client-go/pkg/version
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    local packages=()
    for cmd in "${K8S_COMMANDS[@]}"; do packages+=("k8s.io/kubernetes/cmd/$cmd"); done
    rm -rf "$K8S_HOME/bin.partial" && mkdir -p "$K8S_HOME/bin.partial"
    # One invocation so the four commands share every compiled package.
    go build -trimpath -ldflags "$ldflags" -o "$K8S_HOME/bin.partial/" "${packages[@]}"
  )
  rm -rf "${K8S_HOME:?}/bin" && mv "$K8S_HOME/bin.partial" "$K8S_HOME/bin"
  k8s_is_built || die "kubernetes binaries in $K8S_HOME/bin do not report $K8S_VERSION"
}

etcd_is_built() {
  [[ -x "$ETCD_HOME/bin/etcd" ]] &&
    reports_line "etcd Version: ${ETCD_VERSION#v}" "$ETCD_HOME/bin/etcd" --version
}

build_etcd() {
  log "building etcd $ETCD_VERSION into $ETCD_HOME/bin"
  local src="$ETCD_HOME/src"
  rm -rf "$src" && mkdir -p "$src"
  (
    cd "$src"
    # etcd's own server/main.go; `go install` of the server module fails on its relative replaces.
    cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod init model-operator.local/etcd-build >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    mkdir -p "$ETCD_HOME/bin"
    go build -trimpath -ldflags "-s -w" -o "$ETCD_HOME/bin/etcd" .
  )
  etcd_is_built || die "$ETCD_HOME/bin/etcd does not report $ETCD_VERSION"
}

# kwok v0.8 has no built-in stages (REFERENCE.md §1.4): the stage YAMLs it ships are copied next to
# the binary, and cluster-up passes them with --config.
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
)

kwok_is_built() {
  [[ -x "$KWOK_HOME/bin/kwok" ]] || return 1
  reports_line "kwok version $KWOK_VERSION go*" "$KWOK_HOME/bin/kwok" --version || return 1
  for stage in "${KWOK_STAGES[@]}"; do [[ -s "$KWOK_HOME/stages/$(basename "$stage")" ]] || return 1; done
}

build_kwok() {
  log "building kwok $KWOK_VERSION into $KWOK_HOME"
  local src="$KWOK_HOME/src"
  rm -rf "$src" && mkdir -p "$src"
  (
    cd "$src"
    go mod init model-operator.local/kwok-build >/dev/null 2>&1
    go get -tool "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    mkdir -p "$KWOK_HOME/bin"
    go build -trimpath -ldflags "-s -w" -o "$KWOK_HOME/bin/kwok" sigs.k8s.io/kwok/cmd/kwok
    local module_dir
    module_dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [[ -d "$module_dir/kustomize/stage" ]] || die "kwok module has no kustomize/stage at $module_dir"
    mkdir -p "$KWOK_HOME/stages"
    for stage in "${KWOK_STAGES[@]}"; do
      install -m 0644 "$module_dir/kustomize/stage/$stage" "$KWOK_HOME/stages/"
    done
  )
  kwok_is_built || die "kwok in $KWOK_HOME does not report $KWOK_VERSION or lacks its stages"
}

# The Kubernetes version helm renders for when no cluster is asked (`helm template`, `helm lint`):
# a released helm carries its client-go's (v0.M.P gives v1.M.0; helm's Makefile sets it with -X).
# Without it helm falls back to v1.20.0 and refuses every chart whose kubeVersion is newer, ours
# included, unless --kube-version is given.
helm_kube_version() {
  local client_go
  # The build info `go build` embeds names the client-go version compiled in.
  client_go=$(go version -m "$1" 2>/dev/null | awk '$1 == "dep" && $2 == "k8s.io/client-go" {print $3}')
  [[ $client_go =~ ^v0\.([0-9]+)\. ]] || return 1
  printf 'v1.%s.0' "${BASH_REMATCH[1]}"
}

# What a helm binary renders as .Capabilities.KubeVersion without a cluster.
helm_default_kube_version() {
  local chart
  chart=$(mktemp -d)
  mkdir "$chart/templates"
  printf 'apiVersion: v2\nname: kube-version-probe\nversion: 0.1.0\n' >"$chart/Chart.yaml"
  # shellcheck disable=SC2016 # a Go template, for helm
  printf 'kubeVersion: {{ .Capabilities.KubeVersion.Version }}\n' >"$chart/templates/probe.yaml"
  "$1" template probe "$chart" 2>/dev/null | sed -n 's/^kubeVersion: //p'
  rm -rf "$chart"
}

# Built: the pinned version and a clean tree, as a release reports them, and the Kubernetes version
# of its client-go by default (a helm built before build.sh set it renders nothing without
# --kube-version, so it is rebuilt).
helm_is_built() {
  local helm="$HELM_HOME/bin/helm" expected
  [[ -x $helm ]] || return 1
  reports_line "$HELM_VERSION clean" "$helm" version --template '{{.Version}} {{.GitTreeState}}' || return 1
  expected=$(helm_kube_version "$helm") || return 1
  [[ $(helm_default_kube_version "$helm") == "$expected" ]]
}

build_helm() {
  log "building helm $HELM_VERSION into $HELM_HOME/bin"
  local src="$HELM_HOME/src"
  rm -rf "$src" && mkdir -p "$src"
  (
    cd "$src"
    go mod init model-operator.local/helm-build >/dev/null 2>&1
    go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    # The version metadata helm's own Makefile gives a tagged release: no build metadata (else
    # "+unreleased"), a clean tree, and the Kubernetes major and minor of the client-go it builds
    # with (v0.M.P is Kubernetes 1.M) for chartutil's default capabilities and the linter's
    # deprecation rules. The git commit is not in the module, so it stays empty.
    local client_go minor
    client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)
    [[ $client_go =~ ^v0\.([0-9]+)\. ]] || die "helm $HELM_VERSION builds with k8s.io/client-go $client_go, not a v0.M.P"
    minor=${BASH_REMATCH[1]}
    local ldflags="-s -w" pkg=helm.sh/helm/v3/internal/version
    ldflags+=" -X $pkg.version=$HELM_VERSION -X $pkg.metadata= -X $pkg.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
      ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
    done
    mkdir -p "$HELM_HOME/bin"
    go build -trimpath -ldflags "$ldflags" -o "$HELM_HOME/bin/helm" helm.sh/helm/v3/cmd/helm
  )
  helm_is_built ||
    die "$HELM_HOME/bin/helm does not report $HELM_VERSION with a clean tree, or does not render for its client-go's Kubernetes version by default"
}

main() {
  local pieces=("$@")
  [[ ${#pieces[@]} -gt 0 ]] || pieces=(all)
  [[ " ${pieces[*]} " == *" all "* ]] && pieces=(k8s etcd kwok helm)
  for piece in "${pieces[@]}"; do
    case $piece in
      k8s) with_lock "$K8S_HOME" build_piece k8s "kubernetes $K8S_VERSION" "$K8S_HOME" ;;
      etcd) with_lock "$ETCD_HOME" build_piece etcd "etcd $ETCD_VERSION" "$ETCD_HOME" ;;
      kwok) with_lock "$KWOK_HOME" build_piece kwok "kwok $KWOK_VERSION" "$KWOK_HOME" ;;
      helm) with_lock "$HELM_HOME" build_piece helm "helm $HELM_VERSION" "$HELM_HOME" ;;
      *) die "unknown piece '$piece' (expected k8s, etcd, kwok, helm or all)" ;;
    esac
  done
}

main "$@"
