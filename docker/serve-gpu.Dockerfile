# The GPU server: the same server with onnxruntime-gpu on a CUDA + cuDNN runtime base, CUDA first, CPU second.
#
#   docker build -f docker/serve-gpu.Dockerfile -t odetoode/serve-gpu:0.1.0 .
#   docker run --rm --gpus all --read-only --tmpfs /tmp -p 8000:8000 -p 8001:8001 -p 8002:8002 odetoode/serve-gpu:0.1.0
#
# The CUDA major version of the base must be the one onnxruntime-gpu was built for: the wheels on PyPI from 1.2x on
# are built for CUDA 13 + cuDNN 9 (onnxruntime-gpu 1.31.1 resolves nvidia-cuda-runtime 13.x through its [cuda]
# extra), so the default base is a CUDA 13 image; the build stops if the two disagree. The host needs an NVIDIA
# driver for CUDA 13 and the NVIDIA container toolkit (Kubernetes: the NVIDIA device plugin).
# BASE_IMAGE must be Debian or Ubuntu (python3 comes from apt; Ubuntu 24.04 gives Python 3.12).
ARG BASE_IMAGE=nvidia/cuda:13.1.1-cudnn-runtime-ubuntu24.04
ARG BUILDER_IMAGE=${BASE_IMAGE}

FROM ${BUILDER_IMAGE} AS builder
# The base's own Python, whatever release its distribution ships (pinning it would tie this file to one base).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (a layer of their own, kept while the sources change): the server and the client SDK it
# depends on (odetoode/pyproject.toml, a distribution of its own), installed from empty packages, then removed.
COPY pyproject.toml README.md ./
COPY odetoode/pyproject.toml ./odetoode/
RUN mkdir -p odetoode/client odetoode/proto/inference odetoode/proto/odetoode/v1 service \
    && touch odetoode/client/__init__.py odetoode/proto/__init__.py odetoode/proto/inference/__init__.py \
       odetoode/proto/odetoode/__init__.py odetoode/proto/odetoode/v1/__init__.py service/__init__.py \
    && pip install ./odetoode './[gpu]' \
    && pip uninstall --yes odetoode odetoode-client \
    && rm -rf odetoode service build ./*.egg-info
COPY odetoode ./odetoode
COPY service ./service
COPY docker/check_gpu_build.py /tmp/check_gpu_build.py
RUN pip install --no-deps ./odetoode . \
    && python /tmp/check_gpu_build.py \
    && pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="odetoode-serve-gpu" \
      org.opencontainers.image.description="ODEtoODE policies and classifiers on ONNX Runtime CUDA: gRPC :8001, REST :8000, metrics :8002" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 odetoode \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin odetoode
COPY --from=builder /opt/venv /opt/venv
COPY models /models
COPY docker/healthcheck.py /opt/odetoode/healthcheck.py
# CUDA first, CPU for what CUDA cannot run; no silent fallback: a pod on a node without a usable GPU fails its
# model loads (and readiness) instead of serving on CPU. Set ODETOODE_ALLOW_CPU_FALLBACK=true to allow it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    ODETOODE_REPOSITORY=/models \
    ODETOODE_PROVIDERS='["cuda","cpu"]' \
    ODETOODE_ALLOW_CPU_FALLBACK=false
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/opt/odetoode/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
