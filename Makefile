# rbd-operator — the two commands: `make run` (local sandbox) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
VERSION := $(shell sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -1)
IMAGE := rbd-operator:$(VERSION)

.PHONY: help deps run sandbox-up sandbox-down test unit contract argocd-health integration gitops-e2e bench faults generate clean image e2e test-ceph-matrix

help:
	@echo "make run           sandbox in the foreground: control plane, Ceph, operator, examples (Ctrl-C stops it)"
	@echo "make sandbox-up    the same sandbox in the background;  make sandbox-down stops it"
	@echo "make test          unit and integration tests (real kube-apiserver, etcd, Ceph)"
	@echo "                   CEPH_RELEASE=pacific|reef|tentacle picks the Ceph daemons (default reef)"
	@echo "make test-ceph-matrix  the Ceph-facing integration tests on pacific, reef and tentacle: .bench/ceph-matrix.json"
	@echo "make bench         benchmarks, figures in .bench/results.json"
	@echo "make gitops-e2e    a real Argo CD (application-controller, repo-server) syncing the operator's kinds"
	@echo "make faults        fault matrix, generated bad inputs, leak scan: .bench/faults.json"
	@echo "make image         the container image rbd-operator:$(VERSION) (BASE_IMAGE=debian:bookworm-slim: the public base)"
	@echo "make e2e           kind cluster (node image built here), the image loaded, deploy/ applied, e2e suite;"
	@echo "                   first: v0.1.0 installed with kustomize, taken over and upgraded by Helm (docs/helm.md)"

deps:
	hack/install-deps.sh

run: deps
	hack/sandbox.sh run

sandbox-up: deps
	hack/sandbox.sh up

sandbox-down:
	hack/sandbox.sh down

# The monitor and OSD fault cases run in `make test-ceph-matrix` (and `make faults`), not here.
NO_FAULTS := --ignore=tests/integration/test_ceph_faults.py

test: deps
	$(PY) -m pytest -ra tests/unit tests/contract tests/argocd tests/integration $(NO_FAULTS)

contract: deps
	$(PY) -m pytest -ra tests/contract

argocd-health: deps
	$(PY) -m pytest -ra tests/argocd

unit: deps
	$(PY) -m pytest -ra tests/unit

integration: deps
	$(PY) -m pytest -ra tests/integration $(NO_FAULTS)

test-ceph-matrix: deps
	$(PY) bench/ceph_matrix.py

bench: deps
	$(PY) bench/images.py
	$(PY) bench/scale.py
	$(PY) bench/hosts.py
	$(PY) bench/imports.py
	$(PY) bench/shards.py

gitops-e2e: deps
	$(PY) -m pytest -ra tests/gitops

generate:
	$(PY) hack/gen-argocd.py
	$(PY) hack/gen-chart.py

faults: deps
	$(PY) bench/faults.py

image:
	IMAGE=$(IMAGE) hack/build-image.sh

e2e:
	hack/kind/prepare.sh
	$(PY) -m pytest -ra tests/e2e

clean: sandbox-down
	rm -rf .cache/test .bench
