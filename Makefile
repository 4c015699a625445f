# mfa-service: `make run` serves on 127.0.0.1:50051, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install node-deps system-deps run test test-model bench lint buf-breaking proto proto-check \
	migrate clean lock audit sbom docs cluster-deps cluster-up cluster-down cluster-status test-failover

install: $(STAMP) node-deps

# Every download is checked against the hashes of the lock files (requirements/*.txt, made
# by `make lock`): first the installer and the build backend (build.txt), then the
# dependencies and dev tools (lock.txt; its one sdist builds with that backend, not in an
# isolated environment that would fetch one unchecked), then the two local packages,
# editable, with nothing more.
LOCK := requirements/lock.txt

$(STAMP): requirements/build.txt $(LOCK) pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/build.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-build-isolation -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e clients/python -e .
	touch $(STAMP)

# Regenerate the lock files from requirements/*.in and the two pyproject.toml files: one
# resolution for every platform and Python >= 3.11 (markers kept), hashes of every file
# of each pinned release, no index or path written. Pins that still fit are kept;
# LOCK_ARGS=--upgrade moves them all, LOCK_ARGS='--upgrade-package NAME' one.
# build.txt, runtime.txt and client.txt are subsets of lock.txt, at its versions.
UV_COMPILE := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--no-emit-package mfa-client --no-emit-package mfa-service --custom-compile-command 'make lock'

lock: | $(STAMP)  # uv from .venv, even one installed from older lock files
	$(UV_COMPILE) $(LOCK_ARGS) -o $(LOCK) requirements/lock.in
	$(UV_COMPILE) -c $(LOCK) -o requirements/build.txt requirements/build.in
	$(UV_COMPILE) -c $(LOCK) -o requirements/runtime.txt requirements/runtime.in
	$(UV_COMPILE) -c $(LOCK) -o requirements/client.txt requirements/client.in

# pip-audit over every pinned package of the lock, hashes required, no pip resolution,
# against PyPI's vulnerability feed (its per-release JSON API). --strict: a package that
# could not be audited fails the audit as a vulnerability does. Where that API is out of
# reach, AUDIT_ARGS= still fails on a vulnerability found and lists what was skipped.
AUDIT_ARGS ?= --strict

audit: $(STAMP)
	$(BIN)/pip-audit --requirement $(LOCK) --require-hashes --disable-pip \
		--vulnerability-service pypi --progress-spinner off $(AUDIT_ARGS)

# CycloneDX 1.6 JSON SBOM of what the service runs with: mfa-service (from pyproject.toml)
# and every package of requirements/runtime.txt with its version, purl and hashes. The
# output is reproducible (no timestamp, no serial number). A requirements file carries no
# dependency graph, so the root's missing one is expected: its warning is silenced.
SBOM ?= .sbom/mfa-service.cdx.json

sbom: $(STAMP)
	@mkdir -p $(dir $(SBOM))
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/cyclonedx-py requirements requirements/runtime.txt \
		--pyproject pyproject.toml --spec-version 1.6 --output-reproducible \
		--output-format JSON --output-file $(SBOM)
	@echo "wrote $(SBOM)"

# The Python client's reference (pdoc, from the docstrings of mfa_client's public names):
# $(DOCS)/index.html. The generated mfa.v1 messages are documented in protos/mfa/v1.
DOCS ?= .docs/python

docs: $(STAMP)
	$(BIN)/pdoc --docformat restructuredtext --no-show-source -o $(DOCS) mfa_client
	@echo "wrote $(DOCS)/index.html"

# Node tooling from the lock file (package-lock.json): buf, protoc-gen-es, and the TypeScript
# client workspace (Connect-ES, tsc). Install scripts are not needed, so none run.
NODE_STAMP := node_modules/.installed
NODE_BIN := node_modules/.bin

node-deps: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json clients/typescript/package.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE_STAMP)

proto: $(STAMP) $(NODE_STAMP)
	$(BIN)/python tools/gen_proto.py clients/python
	$(NODE_BIN)/buf generate

proto-check: $(STAMP) $(NODE_STAMP)
	@rm -rf .proto-check && mkdir -p .proto-check
	@$(BIN)/python tools/gen_proto.py .proto-check
	@$(NODE_BIN)/buf generate -o .proto-check
	@diff -r -x __pycache__ .proto-check/mfa clients/python/mfa \
		&& diff -r .proto-check/clients/typescript/src/gen clients/typescript/src/gen \
		|| (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	@rm -rf .proto-check
	@echo "generated code is up to date"

# Tools the tests call that come from Debian rather than PyPI (package = command name):
# oathtool, an independent RFC 6238 implementation the TOTP interop test checks against,
# chromium, the real browser of the passkey tests (never `playwright install`), and jq,
# which the README's grpcurl cookbook (run by a test) uses.
SYSTEM_DEPS := oathtool chromium jq

system-deps:
	@missing=""; for tool in $(SYSTEM_DEPS); do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	[ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "please install$$missing (Debian/Ubuntu: apt-get install$$missing)"; exit 1; fi; }

run: $(STAMP) proto
	$(BIN)/mfa-service serve --dev

# As `make run`: DATABASE_URL when set, else the embedded PostgreSQL under .data/ (--dev;
# outside --dev, mfa-service refuses to run without DATABASE_URL).
migrate: $(STAMP)
	$(BIN)/mfa-service migrate --dev

test: $(STAMP) $(NODE_STAMP) system-deps proto
	PYTHONASYNCIODEBUG=$${PYTHONASYNCIODEBUG:-1} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The stateful model test (tests/test_model.py) with a nightly budget: fresh random
# sequences each run (make test runs a small derandomized budget of the same test). A
# failure prints the @reproduce_failure blob that replays it.
MODEL_EXAMPLES ?= 500
MODEL_STEPS ?= 60

test-model: $(STAMP) proto
	MFA_MODEL_EXAMPLES=$(MODEL_EXAMPLES) MFA_MODEL_STEPS=$(MODEL_STEPS) MFA_MODEL_RANDOM=1 \
		PYTHONASYNCIODEBUG=$${PYTHONASYNCIODEBUG:-1} \
		$(BIN)/python -m pytest -q tests/test_model.py $(PYTEST_ARGS)

# Throughput, latency and server CPU per call against the empty-RPC ceiling, in one run
# (tools/bench.py; BENCH_ARGS="--workers 2 --preload-tokens 10000000" for more).
bench: $(STAMP) proto
	$(BIN)/python tools/bench.py $(BENCH_ARGS)

lint: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict mfa_service clients/python/mfa_client examples deploy tests
	$(BIN)/lint-imports
	$(NODE_BIN)/buf lint
	$(MAKE) --no-print-directory buf-breaking

# No wire or source break of the API against the main branch (buf.yaml: FILE rules).
# subdir=protos: the module root, also on main commits from before buf.yaml existed.
# A clone without a local main branch compares against its own HEAD instead.
HASH := \#
BUF_AGAINST ?= .git$(HASH)$(if $(shell git rev-parse -q --verify refs/heads/main),branch=main,ref=HEAD),subdir=protos

buf-breaking: $(NODE_STAMP)
	$(NODE_BIN)/buf breaking --against '$(BUF_AGAINST)'

# The local HA cluster (deploy/cluster, docs/operations.md): etcd, Patroni with two
# PostgreSQL nodes in synchronous replication, haproxy to the primary, pgbouncer, and
# three mfa-service replicas, as background processes under .cluster/. Needs root (the
# database processes run as the postgres user). Debian packages: program = package, but
# PostgreSQL's server is looked for under /usr/lib/postgresql.
CLUSTER_DEPS := etcd:etcd-server patroni:patroni haproxy:haproxy pgbouncer:pgbouncer setpriv:util-linux

cluster-deps:
	@missing=""; for dep in $(CLUSTER_DEPS); do \
		command -v $${dep%%:*} >/dev/null || missing="$$missing $${dep#*:}"; done; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "please install$$missing (Debian/Ubuntu: apt-get install$$missing)"; exit 1; fi; }

cluster-up: $(STAMP) cluster-deps
	$(BIN)/python deploy/cluster/cluster.py up

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python deploy/cluster/cluster.py down; \
	else $(PYTHON) deploy/cluster/cluster.py down; fi

cluster-status: $(STAMP)
	$(BIN)/python deploy/cluster/cluster.py status

# Throughput over one and three replicas, the cost of pgbouncer's setting, and the
# primary killed under load (tests/cluster); needs `make cluster-up` first.
test-failover: $(STAMP) proto
	$(BIN)/python -m pytest -q -s -m cluster tests/cluster $(PYTEST_ARGS)

clean:
	rm -rf .proto-check .sbom .docs .pytest_cache .mypy_cache .ruff_cache clients/typescript/dist
