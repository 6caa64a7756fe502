# model-operator: the commands a developer and CI run. `make test` is what .ci/run calls.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CRD_FILE := crds/modeldeployments.mlops.sathvik.dev.yaml
# Slow installs (model servers, Python environments) live here, outside the repo, once per machine.
export MODEL_OPERATOR_CACHE ?= $(HOME)/.cache/model-operator

.PHONY: test lint fmt-check clippy unit crd-check crds build render-examples test-servers test-inference

## test: everything CI checks: formatting, lints, every test tier available, CRD drift.
test: fmt-check clippy crd-check unit

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## crd-check: fails when crds/ differs from what the API types generate.
crd-check:
	$(CARGO) run --quiet -- crd | diff -u $(CRD_FILE) - || { echo "crds/ is stale: run 'make crds' and commit"; exit 1; }

## crds: regenerate the committed CRD from the API types.
crds:
	$(CARGO) run --quiet -- crd > $(CRD_FILE)

build:
	$(CARGO) build --release

## render-examples: print what the operator would apply for every example.
render-examples:
	$(CARGO) run --quiet -- render $(addprefix -f ,$(wildcard examples/*.yaml))

lint: fmt-check clippy

## test-servers: install tritonserver, TorchServe and the inference app's Python environment
## (cached under $(MODEL_OPERATOR_CACHE); a second run only checks). The probe tests need them.
test-servers:
	bash tests/servers/setup.sh

## test-inference: pytest for inference/, the fastapi-pytorch runtime, on Debian's CPU PyTorch.
test-inference: test-servers
	source "$(MODEL_OPERATOR_CACHE)/test-servers.env" && cd inference && "$$PYTHON" -m pytest -q tests
