# The CPU server: ONNX Runtime + gRPC/REST/metrics, the bundled model repository, no PyTorch.
#
#   docker build -f docker/serve.Dockerfile -t odetoode/serve:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -p 8000:8000 -p 8001:8001 -p 8002:8002 odetoode/serve:0.1.0
#   docker run ... -v /path/to/repository:/models:ro odetoode/serve:0.1.0     # serve other models
#
# BASE_IMAGE is any Debian-like image with python3 (>= 3.11) and its venv module: python:3.11-slim by default;
# `make image` passes a base made locally with debootstrap where no registry is reachable (docker/build-local.sh).
# BUILDER_IMAGE (default: BASE_IMAGE) runs the pip install; it must have the same Python at the same path, since the
# virtual environment is copied as is. The local build points it at the local base plus the host's CA certificates,
# so that those certificates never end up in the runtime image.
ARG BASE_IMAGE=python:3.11-slim
ARG BUILDER_IMAGE=${BASE_IMAGE}

FROM ${BUILDER_IMAGE} AS builder
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
    && pip install ./odetoode './[serve]' \
    && pip uninstall --yes odetoode odetoode-client \
    && rm -rf odetoode service build ./*.egg-info
# Only the serving half: odetoode/ (the model-file contract and the client SDK with the stubs) and service/.
# trainer/ (PyTorch) stays out.
COPY odetoode ./odetoode
COPY service ./service
# pip and setuptools are not needed at run time (about 25 MB): removed last.
RUN pip install --no-deps ./odetoode . \
    && python -c "import service.server, onnxruntime; print('onnxruntime', onnxruntime.__version__)" \
    && ! python -c "import torch" 2>/dev/null \
    && pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="odetoode-serve" \
      org.opencontainers.image.description="ODEtoODE policies and classifiers over gRPC (:8001), REST (:8000), metrics (:8002)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --gid 10001 odetoode \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin odetoode
COPY --from=builder /opt/venv /opt/venv
# The bundled repository, owned by root and read-only to the server; mount another repository over /models.
COPY models /models
COPY docker/healthcheck.py /opt/odetoode/healthcheck.py
# Nothing is written outside /tmp (mount a tmpfs there with a read-only root); bytecode was compiled at install.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    ODETOODE_REPOSITORY=/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002
# No curl in the image: docker/healthcheck.py asks /v2/health/ready with the standard library (200 ready; 503
# while loading or draining), over HTTPS when ODETOODE_TLS_CERT is set, with the token when health needs one.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/opt/odetoode/healthcheck.py"]
# The server handles SIGTERM itself (readiness off, drain for ODETOODE_DRAIN_GRACE_S, exit 0): exec form, no shell.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
