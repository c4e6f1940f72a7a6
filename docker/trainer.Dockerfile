# The offline half: ES and supervised training on CPU (PyTorch CPU build, MuJoCo, DM Control, Ray), ONNX export.
#
#   docker build -f docker/trainer.Dockerfile -t odetoode/trainer:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/runs:/work/runs" -v "$PWD/models:/work/models" \
#       odetoode/trainer:0.1.0 es --env HalfCheetah-v5 --iterations 20 --out runs/demo --export demo --repository models
#
# (--user: the image's user, 10001, cannot write into bind-mounted directories owned by someone else.)
#
# torch==2.13.0 (pinned by the project) comes from TORCH_INDEX_URL, PyTorch's CPU wheel index by default: PyPI's Linux
# wheel of the same version is the CUDA build (several GB). pip takes the "+cpu" build from that index because a local
# version label sorts above the plain release. Set TORCH_INDEX_URL empty to use PyPI alone (or a wheelhouse given
# with PIP_FIND_LINKS, as docker/build-local.sh can pass one).
ARG BASE_IMAGE=python:3.11-slim
ARG BUILDER_IMAGE=${BASE_IMAGE}

FROM ${BUILDER_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
RUN mkdir odetoode trainer \
    && touch odetoode/__init__.py trainer/__init__.py \
    && if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install './[train]' \
    && pip uninstall --yes odetoode \
    && rm -rf odetoode trainer build ./*.egg-info
COPY odetoode ./odetoode
COPY trainer ./trainer
RUN pip install --no-deps . \
    && python -c "import torch, trainer.cli; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="odetoode-trainer" \
      org.opencontainers.image.description="ODEtoODE training (evolution strategies, supervised) and ONNX export, CPU" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 odetoode \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin odetoode \
    && install -d -o 10001 -g 10001 /work
COPY --from=builder /opt/venv /opt/venv
# Caches (matplotlib) go to /tmp, so the image also runs with a read-only root; ONNX Runtime's telemetry is off.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    MUJOCO_GL=disabled
USER 10001:10001
# Runs, checkpoints and exported repositories land under /work (mount a volume there); MuJoCo writes its log here too.
WORKDIR /work
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["--help"]
