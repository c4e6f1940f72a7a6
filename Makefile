# The README's two commands: `make serve` and `make test`. Both create the environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= serve,train,dev
STAMP  := $(VENV)/.installed

.PHONY: help serve test test-slow lint typecheck bench proto clean

help:
	@echo "make serve      serve the bundled models in models/ (HTTP :8000, gRPC :8001, metrics :8002)"
	@echo "make test       create .venv if needed, lint, type-check and run the test suite"
	@echo "make test-slow  the suite plus opt-in slow tests"
	@echo "make bench      run the benchmarks in benchmarks/"
	@echo "make proto      regenerate the gRPC stubs in service/_proto/ from proto/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes; the stamp records that the environment matches it.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

serve: $(STAMP)
	$(BIN)/python -m service --repository models

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	RUN_SLOW=1 $(BIN)/python -m pytest

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

proto: $(STAMP)
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
