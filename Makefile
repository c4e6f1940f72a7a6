# The README's two commands: `make serve` and `make test`. Both create the environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= serve,train,dev,deploy
STAMP  := $(VENV)/.installed

.PHONY: help serve test test-slow lint typecheck bench gpu-check proto fixtures clean image image-test deploy-check rules \
	monitoring-test prometheus-image compose-test

help:
	@echo "make serve      serve the bundled models in models/ (HTTP :8000, gRPC :8001, metrics :8002)"
	@echo "make test       create .venv if needed, lint, type-check and run the test suite"
	@echo "make test-slow  the suite plus opt-in slow tests"
	@echo "make bench      run the benchmarks in benchmarks/"
	@echo "make gpu-check  on an NVIDIA GPU host (VENV=.venv-gpu EXTRAS=gpu,dev): CUDA really serving, golden"
	@echo "                self-check on the device, CPU vs GPU crossover; results in docs/results/gpu/ (opt-in)"
	@echo "make proto      regenerate the gRPC stubs in odetoode/proto/ from proto/"
	@echo "make fixtures   re-export the test fixture models in odetoode/testing/fixtures/ (after an exporter change)"
	@echo "make image      build the CPU serve image (podman/docker; a local Debian base where no registry answers)"
	@echo "make image-test build it, run it read-only, call it over gRPC and REST, check metrics/user/drain (opt-in)"
	@echo "make deploy-check  hadolint, yamllint, kubernetes-validate and server agreement for docker/ and deploy/"
	@echo "make rules      regenerate the Prometheus rules, PrometheusRule and alert docs from deploy/monitoring/rules.py"
	@echo "make monitoring-test  real servers + a real Prometheus (apt-get install prometheus if missing): every"
	@echo "                alert fires, every dashboard query has data; figures in docs/results/monitoring.json (opt-in)"
	@echo "make compose-test  docker/compose.yaml's server + Prometheus with podman-compose (apt-get installs it if"
	@echo "                missing), scraped inside the stack; figures in docs/results/compose.json (opt-in)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever a pyproject.toml changes; the stamp records that the environment matches them. The client SDK
# (odetoode/pyproject.toml) is a distribution of its own that the server depends on: both are installed together.
$(STAMP): pyproject.toml odetoode/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ./odetoode -e '.[$(EXTRAS)]'
	@touch $@

serve: $(STAMP)
	$(BIN)/python -m service --repository models

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The client SDK is also checked as the Python robots run (3.10, as on ROS 2 Humble).
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --python-version 3.10 --no-warn-unused-configs -p odetoode.client -p odetoode.proto

test: lint typecheck
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	RUN_SLOW=1 $(BIN)/python -m pytest

# gpu_check.py needs a GPU and its own environment: `make gpu-check`.
bench: $(STAMP)
	@for b in $(filter-out benchmarks/gpu_check.py,$(wildcard benchmarks/*.py)); do echo "== $$b"; \
		$(BIN)/python $$b || exit 1; done

# The GPU check (docs/deploy.md "GPU"), opt-in: on a host with an NVIDIA GPU, in an environment with onnxruntime-gpu
# in place of onnxruntime (they are one module), e.g. `make gpu-check VENV=.venv-gpu EXTRAS=gpu,dev`.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py docs/results/gpu

proto: $(STAMP)
	$(BIN)/python proto/generate.py

fixtures: $(STAMP)
	$(BIN)/python -m trainer.fixtures

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Containers and Kubernetes (docs/deploy.md). `make image-test` is opt-in (not part of `make test`): it needs a
# container engine and a few minutes the first time (a local base image is built once, then reused).
SERVE_IMAGE ?= localhost/odetoode/serve:dev
DEPLOY_STAMP := $(VENV)/.installed-deploy

image:
	IMAGE=$(SERVE_IMAGE) DOCKERFILE=docker/serve.Dockerfile bash docker/build-local.sh

image-test: image $(STAMP)
	IMAGE=$(SERVE_IMAGE) $(BIN)/python docker/image_test.py

$(DEPLOY_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e ./odetoode -e '.[$(EXTRAS),deploy]'
	@touch $@

deploy-check: $(DEPLOY_STAMP)
	$(BIN)/python deploy/check.py

# Monitoring (docs/deploy.md "Monitoring"). The rules are written from deploy/monitoring/rules.py; `make deploy-check`
# fails when the committed files differ from it. `make monitoring-test` is opt-in (not part of `make test`): it
# installs Prometheus from Debian when missing (root and network to the Debian mirror) and runs about a minute.
rules: $(STAMP)
	$(BIN)/python deploy/monitoring/rules.py

monitoring-test: $(STAMP)
	RUN_MONITORING=1 MONITORING_RESULTS=docs/results/monitoring.json \
		$(BIN)/python -m pytest -q tests/deploy/test_monitoring_live.py

# The Compose stack (docs/deploy.md "Compose"), opt-in like image-test: the serve image, and Prometheus as the image
# docker/compose.yaml names (tagged as PROMETHEUS_IMAGE) where it can be pulled, else Debian's package built on the
# local base (docker/prometheus.Dockerfile); then server + prometheus started with podman-compose, checked, removed.
PROMETHEUS_IMAGE ?= localhost/odetoode/prometheus:dev
PROMETHEUS_UPSTREAM := $(shell sed -n 's/.*PROMETHEUS_IMAGE:-\([^}]*\)}.*/\1/p' docker/compose.yaml)

prometheus-image:
	UPSTREAM_IMAGE=$(PROMETHEUS_UPSTREAM) IMAGE=$(PROMETHEUS_IMAGE) DOCKERFILE=docker/prometheus.Dockerfile \
		PUBLIC_BASE=debian:bookworm-slim bash docker/build-local.sh

compose-test: image prometheus-image $(STAMP)
	RUN_COMPOSE=1 COMPOSE_RESULTS=docs/results/compose.json SERVE_IMAGE=$(SERVE_IMAGE) \
		PROMETHEUS_IMAGE=$(PROMETHEUS_IMAGE) $(BIN)/python -m pytest -q tests/deploy/test_compose_live.py
