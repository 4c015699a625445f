# mfa-service: `make run` serves on 127.0.0.1:50051, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint proto proto-check migrate clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py clients/python

proto-check: $(STAMP)
	@rm -rf .proto-check && mkdir -p .proto-check
	@$(BIN)/python tools/gen_proto.py .proto-check
	@diff -r -x __pycache__ .proto-check/mfa clients/python/mfa \
		|| (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	@rm -rf .proto-check
	@echo "generated code is up to date"

run: $(STAMP) proto
	$(BIN)/mfa-service serve --dev

migrate: $(STAMP)
	$(BIN)/mfa-service migrate

test: $(STAMP) proto
	PYTHONASYNCIODEBUG=$${PYTHONASYNCIODEBUG:-0} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict mfa_service clients/python/mfa_client
	$(BIN)/lint-imports

clean:
	rm -rf .proto-check .pytest_cache .mypy_cache .ruff_cache
