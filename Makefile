# model-operator: the commands a developer and CI run. `make test` is what .ci/run calls.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CRD_FILE := crds/modeldeployments.mlops.sathvik.dev.yaml
# Helm installs CRDs only from the chart's own crds/, so the chart carries a copy.
CHART_CRD_FILE := charts/model-operator/crds/modeldeployments.mlops.sathvik.dev.yaml
# Slow installs (model servers, Python environments) live here, outside the repo, once per machine.
export MODEL_OPERATOR_CACHE ?= $(HOME)/.cache/model-operator

.PHONY: test lint fmt-check clippy unit e2e install-check release-build crd-check crds build render-examples demo \
	cluster-build cluster-up cluster-down cluster-smoke bench bench-node-agent bench-readiness bench-autoscaling \
	test-servers test-inference

## test: everything CI checks: formatting, lints, every test tier available, CRD drift, the
## install bundles on the local cluster, and the release builds that go into the images.
test: fmt-check clippy crd-check unit test-inference e2e install-check release-build

## demo: the local cluster, the operator and the examples, left running (`make cluster-down` stops them).
demo:
	tests/cluster/demo.sh

fmt-check:
	$(CARGO) fmt --all --check

# The e2e target is left out of --all-targets (test = false), so it is linted by name.
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --test e2e -- -D warnings

# The node agent's tests build their doubles (tests/fake-nvml, tests/fake-kubelet) themselves.
unit: test-servers
	$(CARGO) test --workspace

## e2e: the cluster tier: the operator binary against the local control plane (started if needed,
## left running for the next run; `make cluster-down` stops it). A short HPA sync keeps it quick.
E2E_THREADS ?= 8
e2e: test-servers
	HPA_SYNC_PERIOD=2s tests/cluster/up.sh
	$(CARGO) test --test e2e -- --test-threads=$(E2E_THREADS) --skip bench_

## install-check: `kubectl apply -k config/default` and the Helm chart on the local cluster (started
## if needed): accepted by the API server, scheduled where they should be, RBAC enough for the real
## operator binary run as the installed ServiceAccount; then removed. Holds the cluster lock that
## e2e runs take, since both use the one custom-metrics APIService.
install-check:
	tests/install/check.sh

## release-build: the two release binaries the Dockerfile's images contain, built by the script
## its build stages run (a static musl operator, a glibc node agent), then checked: the operator
## is static, the node agent loads NVML at run time, both start.
RELEASE_DIR ?= $(or $(CARGO_TARGET_DIR),target)/release-images
release-build:
	hack/build-release.sh operator $(RELEASE_DIR)
	hack/build-release.sh node-agent $(RELEASE_DIR)
	hack/build-release.sh --verify $(RELEASE_DIR)

## crd-check: fails when crds/ (or the chart's copy) differs from what the API types generate.
crd-check:
	$(CARGO) run --quiet -- crd | diff -u $(CRD_FILE) - || { echo "crds/ is stale: run 'make crds' and commit"; exit 1; }
	diff -u $(CRD_FILE) $(CHART_CRD_FILE) || { echo "$(CHART_CRD_FILE) is stale: run 'make crds' and commit"; exit 1; }

## crds: regenerate the committed CRD (and the Helm chart's copy) from the API types.
crds:
	$(CARGO) run --quiet -- crd > $(CRD_FILE)
	cp $(CRD_FILE) $(CHART_CRD_FILE)

build:
	$(CARGO) build --release

## render-examples: print what the operator would apply for every example.
render-examples:
	$(CARGO) run --quiet -- render $(addprefix -f ,$(wildcard examples/*.yaml))

lint: fmt-check clippy

## Local control plane (tests/cluster/, DESIGN.md §6 tier 3): real etcd, kube-apiserver,
## kube-controller-manager, kube-scheduler and kwok's fake GPU nodes as processes on 127.0.0.1.
## CLUSTER_DIR (default .cluster) holds its state; HPA_SYNC_PERIOD (default 15s) tunes the HPA loop.

## cluster-build: build (once per machine, cached in ~/.cache/model-operator) the cluster binaries.
cluster-build:
	tests/cluster/build.sh all

## cluster-up: start the local cluster (idempotent); writes .cluster/kubeconfig and .cluster/bin/kubectl.
cluster-up:
	tests/cluster/up.sh

## cluster-down: stop every process cluster-up started and delete .cluster.
cluster-down:
	tests/cluster/down.sh

## cluster-smoke: check a running cluster schedules GPU pods, completes Jobs and syncs HPAs.
cluster-smoke:
	tests/cluster/smoke.sh

## bench: every benchmark; each prints its figures and fails when it misses its target.
bench: bench-node-agent bench-readiness bench-autoscaling

## bench-node-agent: resident memory and CPU per scrape of the release agent, 8 GPUs and 50 pods.
bench-node-agent:
	$(CARGO) bench -p node-agent --bench scrape

## bench-readiness: seconds from a model finishing its load in the real FastAPI runtime to the
## operator reporting ModelReady, on the local cluster.
bench-readiness: test-servers
	tests/cluster/up.sh
	$(CARGO) bench --bench model_ready_latency

## test-servers: install tritonserver, TorchServe and the inference app's Python environment
## (cached under $(MODEL_OPERATOR_CACHE); a second run only checks). The probe tests need them.
test-servers:
	bash tests/servers/setup.sh

## test-inference: pytest for inference/, the fastapi-pytorch runtime, on Debian's CPU PyTorch.
test-inference: test-servers
	source "$(MODEL_OPERATOR_CACHE)/test-servers.env" && cd inference && "$$PYTHON" -m pytest -q tests

## bench-autoscaling: seconds from a utilisation step on the fake GPUs to the HPA's new desired
## replica count, with the controller manager's default HPA sync period (15s). Restarts the
## controller manager for it and afterwards puts back the 2s sync that `make e2e` uses.
bench-autoscaling:
	HPA_SYNC_PERIOD=15s tests/cluster/up.sh
	status=0; $(CARGO) test --test e2e bench_autoscaling_reaction -- --ignored --nocapture || status=$$?; \
	HPA_SYNC_PERIOD=2s tests/cluster/up.sh; exit $$status
