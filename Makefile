# model-operator: the commands a developer and CI run. `make test` is what .ci/run calls; `make
# help` lists every target. The kubebuilder project this replaces had install, uninstall, deploy,
# undeploy, run, docker-build, docker-push, manifests, lint and test-e2e: they work the same here.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CRD_FILE := crds/modeldeployments.mlops.sathvik.dev.yaml
# Helm installs CRDs only from the chart's own crds/, so the chart carries a copy.
CHART_CRD_FILE := charts/model-operator/crds/modeldeployments.mlops.sathvik.dev.yaml
# Slow installs (model servers, Python environments) live here, outside the repo, once per machine.
export MODEL_OPERATOR_CACHE ?= $(HOME)/.cache/model-operator

# Two local clusters (tests/cluster/), each with its own state directory and loopback ports, so
# that `make demo` and `make test` run in either order and beside each other: the demo's keeps
# .cluster and the default ports; the test tier's (e2e, install-check, the benches) gets
# .cluster-test and the next port set. CLUSTER_PORT_OFFSET (tests/cluster/lib.sh: a multiple of
# 100) moves both, for a second checkout on the same machine. These, not a CLUSTER_DIR from the
# environment, say which cluster a target uses.
CLUSTER_PORT_OFFSET ?= 0
TEST_CLUSTER_PORT_OFFSET ?= $(shell expr $(CLUSTER_PORT_OFFSET) + 100 2>/dev/null || echo not-a-number-$(CLUSTER_PORT_OFFSET))
DEMO_CLUSTER_DIR ?= $(CURDIR)/.cluster
TEST_CLUSTER_DIR ?= $(CURDIR)/.cluster-test
ON_DEMO_CLUSTER = CLUSTER_DIR=$(DEMO_CLUSTER_DIR) CLUSTER_PORT_OFFSET=$(CLUSTER_PORT_OFFSET)
ON_TEST_CLUSTER = CLUSTER_DIR=$(TEST_CLUSTER_DIR) CLUSTER_PORT_OFFSET=$(TEST_CLUSTER_PORT_OFFSET)
# cluster-up, cluster-smoke and cluster-down take CLUSTER=demo or CLUSTER=test.
CLUSTER ?=
CHECK_CLUSTER = $(if $(filter-out demo test,$(or $(CLUSTER),demo)),$(error CLUSTER=$(CLUSTER): expected demo or test))
ON_CLUSTER = $(CHECK_CLUSTER)$(if $(filter test,$(CLUSTER)),$(ON_TEST_CLUSTER),$(ON_DEMO_CLUSTER))
# The test tier's runs take turns on its cluster (its lock), after starting it if needed.
WITH_TEST_CLUSTER = $(ON_TEST_CLUSTER) tests/cluster/with-cluster.sh

# Images (make docker-build, docker-push, deploy): empty means the ones config/ names. The node
# agent's follows IMG (IMG's repository with -node-agent, same tag) unless AGENT_IMG is set.
IMG ?=
AGENT_IMG ?=
CONTAINER_TOOL ?= docker
IMAGES = IMG="$(IMG)" AGENT_IMG="$(AGENT_IMG)" CONTAINER_TOOL="$(CONTAINER_TOOL)"
# make deploy / undeploy: config/default, or config/prometheus for the ServiceMonitors as well.
DEPLOY_CONFIG ?= config/default

.PHONY: help test lint fmt-check clippy unit e2e test-e2e install-check release-build crd-check manifests crds \
	build render-examples demo run install uninstall deploy undeploy docker-build docker-push \
	cluster-build cluster-up cluster-down cluster-smoke bench bench-node-agent bench-readiness bench-autoscaling bench-churn bench-scale bench-activator bench-cold-start chaos \
	test-servers test-inference

## help: every target with its `##` line.
help:
	@awk '/^## [a-z0-9-]+: / { sub(/^## /, ""); name = $$1; sub(/^[^ ]+ /, ""); printf "\n  %-18s %s\n", substr(name, 1, length(name) - 1), $$0; next } \
		/^## / && name != "" { sub(/^## /, ""); printf "  %-18s %s\n", "", $$0; next } { name = "" }' $(MAKEFILE_LIST)

## test: everything CI checks: formatting, lints, every test tier available, CRD drift, the
## install bundles on the local cluster, and the release builds that go into the images.
## The cluster tiers use the test tier's cluster (.cluster-test), never the demo's.
test: fmt-check clippy crd-check unit test-inference e2e chaos install-check release-build

## demo: the local cluster (.cluster), the operator and the examples, left running
## (`make cluster-down` stops them). Runs beside `make test`'s cluster.
demo:
	$(ON_DEMO_CLUSTER) tests/cluster/demo.sh

## fmt-check: `cargo fmt --check` on the whole workspace.
fmt-check:
	$(CARGO) fmt --all --check

## clippy: clippy with -D warnings on every target. The e2e target is left out of --all-targets
## (test = false), so it is linted by name.
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --test e2e --test chaos -- -D warnings

## lint: fmt-check and clippy.
lint: fmt-check clippy

## unit: `cargo test --workspace`. The node agent's tests build their doubles (tests/fake-nvml,
## tests/fake-kubelet) themselves; the probe tests need `make test-servers`.
unit: test-servers
	$(CARGO) test --workspace

## e2e: the cluster tier: the operator binary against the test tier's local control plane
## (started if needed, left running for the next run; `make cluster-down` stops it), holding
## its lock. A short HPA sync keeps it quick. E2E_ARGS picks tests (a name filter).
E2E_THREADS ?= 8
E2E_ARGS ?=
e2e: test-servers
	HPA_SYNC_PERIOD=2s $(WITH_TEST_CLUSTER) $(CARGO) test --test e2e -- --test-threads=$(E2E_THREADS) --skip bench_ $(E2E_ARGS)

## chaos: the chaos tier on the test tier's cluster (holding its lock): operator crashes during a
## rollout, kube-apiserver and etcd restarted, a frozen and a cut-off leader, node agents, NVML and
## GPU nodes lost. One test at a time: some restart the cluster's processes. CHAOS_MODELS,
## CHAOS_KILLS scale it up; CHAOS_ARGS picks tests (a name filter).
CHAOS_ARGS ?=
chaos: test-servers
	HPA_SYNC_PERIOD=2s $(WITH_TEST_CLUSTER) $(CARGO) test --test chaos -- --test-threads=1 $(CHAOS_ARGS)

## test-e2e: the cluster tier, as kubebuilder's name for it: `make e2e`.
test-e2e: e2e

## install-check: `kubectl apply --server-side -k config/default` and the Helm chart on the
## test tier's cluster (started if needed), each with its defaults on a cluster without the
## ServiceMonitor CRD, then the ServiceMonitors opt-in (config/prometheus, serviceMonitor.enabled)
## with it: accepted by the API server, scheduled where they should be, RBAC enough for the real
## operator binary run as the installed ServiceAccount; then removed. Holds the cluster's lock,
## as e2e runs do, since both use the one custom-metrics APIService.
install-check:
	$(ON_TEST_CLUSTER) tests/install/check.sh

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
	$(CARGO) run --quiet -- crd | diff -u $(CRD_FILE) - || { echo "crds/ is stale: run 'make manifests' and commit"; exit 1; }
	diff -u $(CRD_FILE) $(CHART_CRD_FILE) || { echo "$(CHART_CRD_FILE) is stale: run 'make manifests' and commit"; exit 1; }

## manifests: regenerate the committed CRD (and the Helm chart's copy) from the API types, as
## kubebuilder's `make manifests` does with controller-gen. RBAC is written by hand (config/rbac).
manifests:
	$(CARGO) run --quiet -- crd > $(CRD_FILE)
	cp $(CRD_FILE) $(CHART_CRD_FILE)

## crds: the former name of `make manifests`.
crds: manifests

## build: the release build of the workspace (`cargo build --release`).
build:
	$(CARGO) build --release

## render-examples: print what the operator would apply for every example.
render-examples:
	$(CARGO) run --quiet -- render $(addprefix -f ,$(wildcard examples/*.yaml))

## The current kubeconfig's cluster (KUBECONFIG, else ~/.kube/config; kubectl on PATH, else the one
## `make cluster-build` builds, or KUBECTL), as kubebuilder's targets act on it.

## install: apply the ModelDeployment CRD to the current kubeconfig's cluster.
install:
	hack/deploy.sh install

## uninstall: delete the CRD from the current kubeconfig's cluster, and so every ModelDeployment.
uninstall:
	hack/deploy.sh uninstall

## deploy: apply the bundle (DEPLOY_CONFIG, default config/default; config/prometheus adds the
## ServiceMonitors) to the current kubeconfig's cluster, with IMG as the operator's image (and
## the model-fetch init container's) and AGENT_IMG as the node agent's; no committed file changes.
deploy:
	$(IMAGES) DEPLOY_CONFIG=$(DEPLOY_CONFIG) hack/deploy.sh deploy

## undeploy: delete what `make deploy` applied, the CRD included (so every ModelDeployment).
undeploy:
	$(IMAGES) DEPLOY_CONFIG=$(DEPLOY_CONFIG) hack/deploy.sh undeploy

## run: the operator from this checkout against the current kubeconfig's cluster, in the
## foreground, as kubebuilder's `make run` (`make install` first for the CRD). RUN_ARGS are its
## flags: from outside the cluster it cannot reach pod IPs, so readiness comes from the kubelet's
## probes; one replica needs no leader Lease (so no model-operator-system namespace either);
## admin and custom-metrics ports on loopback only. Stop a deployed operator first
## (`make undeploy`), or both reconcile.
RUN_ARGS ?= --probe-pod-ips=false --disable-leader-election --metrics-addr=127.0.0.1:8080 \
	--health-addr=127.0.0.1:8081 --custom-metrics-addr=127.0.0.1:6443
run:
	hack/deploy.sh context
	$(CARGO) run --bin model-operator -- run $(RUN_ARGS)

## docker-build: build the operator (IMG) and node agent (AGENT_IMG) images from the Dockerfile
## with CONTAINER_TOOL (default docker, BuildKit). Without an engine it fails saying so;
## `make release-build` builds the same binaries without one.
docker-build:
	$(IMAGES) hack/deploy.sh docker-build

## docker-push: push the images docker-build tagged (IMG, AGENT_IMG).
docker-push:
	$(IMAGES) hack/deploy.sh docker-push

## Local control plane (tests/cluster/, DESIGN.md §6 tier 3): real etcd, kube-apiserver,
## kube-controller-manager, kube-scheduler and kwok's fake GPU nodes as processes on 127.0.0.1.
## Two of them: the demo's (.cluster, the default ports) and the test tier's (.cluster-test, the
## ports 100 up); HPA_SYNC_PERIOD (default 15s) tunes the HPA loop.

## cluster-build: build (once per machine, cached in ~/.cache/model-operator) the cluster binaries.
cluster-build:
	tests/cluster/build.sh all

## cluster-up: start the demo's local cluster (idempotent), or the test tier's with CLUSTER=test;
## writes <dir>/kubeconfig and <dir>/bin/kubectl.
cluster-up:
	$(ON_CLUSTER) tests/cluster/up.sh

## cluster-down: stop every process of both local clusters (demo and test) and delete their
## state; CLUSTER=demo or CLUSTER=test stops one.
cluster-down:
	$(CHECK_CLUSTER)$(if $(filter test,$(CLUSTER)),,$(ON_DEMO_CLUSTER) tests/cluster/down.sh)
	$(if $(filter demo,$(CLUSTER)),,$(ON_TEST_CLUSTER) tests/cluster/down.sh)

## cluster-smoke: check a running cluster (the demo's, or CLUSTER=test) schedules GPU pods,
## completes Jobs and syncs HPAs.
cluster-smoke:
	$(ON_CLUSTER) tests/cluster/smoke.sh

## bench: every benchmark; each prints its figures and fails when it misses its target.
bench: bench-node-agent bench-readiness bench-autoscaling bench-churn bench-scale bench-activator bench-cold-start

## bench-node-agent: resident memory and CPU per scrape of the release agent, 8 GPUs and 50 pods.
bench-node-agent:
	$(CARGO) bench -p node-agent --bench scrape

## bench-readiness: seconds from a model finishing its load in the real FastAPI runtime to the
## operator reporting ModelReady, on the test tier's cluster.
bench-readiness: test-servers
	$(WITH_TEST_CLUSTER) $(CARGO) bench --bench model_ready_latency

## bench-activator: the activator on loopback with the real FastAPI runtime: a cold start's
## parts (asking for a replica, start and load, forward), the added latency on a warm model
## (target: under 1 ms at the median), resident memory per held request. No cluster needed.
bench-activator: test-servers
	$(CARGO) bench --bench activator

## bench-cold-start: a cold start on the test tier's cluster, the real operator and activator
## binaries and the real FastAPI runtime: first request at zero to its answer, split into
## scale-up, scheduling, start and load, and the forward; then bench-activator's warm overhead
## and memory per held request.
bench-cold-start: test-servers
	$(WITH_TEST_CLUSTER) $(CARGO) bench --bench cold_start
	$(CARGO) bench --bench activator

## bench-churn: 1000 ModelDeployments created and deleted beside one that stays, on the test tier's
## cluster, by the release image's operator (static musl, as it runs in production): afterwards
## /metrics has no series of theirs and the operator's RSS returns to within 10 % of where it
## started. BENCH_CHURN_MODELS for fewer.
bench-churn:
	hack/build-release.sh operator $(RELEASE_DIR)
	E2E_OPERATOR_BIN=$(abspath $(RELEASE_DIR))/model-operator $(WITH_TEST_CLUSTER) $(CARGO) bench --bench model_churn

## bench-scale: SCALE_MODELS (default 1000) ModelDeployments of every runtime, GPU and CPU, some
## autoscaled or validated, on the test tier's cluster (with fake nodes and a Service range sized
## for them), by the release image's operator, beside the limit: the same children written by a
## plain parallel client. Time to every child written and every model Ready (backlog and burst)
## as a ratio to the limit, memory, requests and CPU at rest (SCALE_REST_SECONDS, default 300),
## one model's change; fails on a missed target. Figures: docs/scale.md.
bench-scale:
	hack/build-release.sh operator $(RELEASE_DIR)
	E2E_OPERATOR_BIN=$(abspath $(RELEASE_DIR))/model-operator $(WITH_TEST_CLUSTER) $(CARGO) bench --bench model_scale

## test-servers: install tritonserver, TorchServe, the inference app's Python environment, moto
## and fake-gcs-server (cached under $(MODEL_OPERATOR_CACHE); a second run only checks). The probe
## and object-store fetch tests need them.
test-servers:
	bash tests/servers/setup.sh

## test-inference: pytest for inference/, the fastapi-pytorch runtime, on Debian's CPU PyTorch.
test-inference: test-servers
	source "$(MODEL_OPERATOR_CACHE)/test-servers.env" && cd inference && "$$PYTHON" -m pytest -q tests

## bench-autoscaling: seconds from a utilisation step on the fake GPUs to the HPA's new desired
## replica count, with the controller manager's default HPA sync period (15s), on the test
## tier's cluster. Restarts its controller manager for it and afterwards puts back the 2s sync
## that `make e2e` uses.
bench-autoscaling:
	status=0; HPA_SYNC_PERIOD=15s $(WITH_TEST_CLUSTER) $(CARGO) test --test e2e bench_autoscaling_reaction -- --ignored --nocapture || status=$$?; \
	HPA_SYNC_PERIOD=2s $(WITH_TEST_CLUSTER) true; exit $$status
