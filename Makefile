# model-operator: the commands a developer and CI run. `make test` is what .ci/run calls.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CRD_FILE := crds/modeldeployments.mlops.sathvik.dev.yaml

.PHONY: test lint fmt-check clippy unit crd-check crds build render-examples

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
