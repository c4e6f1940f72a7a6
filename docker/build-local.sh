#!/usr/bin/env bash
# Builds an image from one of docker/*.Dockerfile on this machine, with or without an image registry.
#
#   docker/build-local.sh                                  # docker/serve.Dockerfile -> localhost/odetoode/serve:dev
#   DOCKERFILE=docker/serve-gpu.Dockerfile IMAGE=localhost/odetoode/serve-gpu:dev docker/build-local.sh
#   UPSTREAM_IMAGE=prom/prometheus:v3.5.0 DOCKERFILE=docker/prometheus.Dockerfile \
#       IMAGE=localhost/odetoode/prometheus:dev PUBLIC_BASE=debian:bookworm-slim docker/build-local.sh
#
# UPSTREAM_IMAGE: an image that does the same job; when it is present or can be pulled it is tagged as IMAGE and
# nothing is built (FORCE_BUILD=1 builds all the same).
# Engine: $ENGINE if set; else docker when a Docker daemon answers; else podman (installed with apt-get, together
# with runc, when missing; it runs with docker/podman/containers.conf).
# Base: $BASE_IMAGE if set; else python:3.11-slim when it is present or can be pulled; else a base made here from
# Debian packages (debootstrap, Debian 12 "bookworm", Python 3.11) and imported as localhost/odetoode/base:bookworm.
# That base is built once and reused (REBUILD_BASE=1 makes it again). The pip install runs in a second local image,
# localhost/odetoode/build-base:bookworm, which also trusts this host's extra CA certificates
# (/usr/local/share/ca-certificates, needed where a proxy re-signs TLS); the runtime stage starts from the clean base,
# so those certificates never reach the image built.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

DOCKERFILE="${DOCKERFILE:-docker/serve.Dockerfile}"
IMAGE="${IMAGE:-localhost/odetoode/serve:dev}"
PUBLIC_BASE="${PUBLIC_BASE:-python:3.11-slim}"
LOCAL_BASE="${LOCAL_BASE:-localhost/odetoode/base:bookworm}"
LOCAL_BUILD_BASE="${LOCAL_BUILD_BASE:-localhost/odetoode/build-base:bookworm}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
EXTRA_CA_DIR="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
REBUILD_BASE="${REBUILD_BASE:-0}"

log() { printf '[build-local] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
    log "installing with apt-get: $* (missing on this machine)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# -- engine ---------------------------------------------------------------------------------------------------------
if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        ENGINE=podman
    fi
fi
if [ "$ENGINE" = podman ]; then
    missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    # netavark + aardvark-dns: container networking for RUN steps and published ports; uidmap for podman itself
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}" netavark aardvark-dns uidmap iptables; fi
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/podman/containers.conf}"
    export BUILDAH_FORMAT=docker  # the OCI format drops HEALTHCHECK
fi
log "engine: $ENGINE $($ENGINE --version 2>/dev/null | head -n1)"

have_image() { $ENGINE image inspect "$1" >/dev/null 2>&1; }

# -- upstream -------------------------------------------------------------------------------------------------------
if [ -n "${UPSTREAM_IMAGE:-}" ] && [ "${FORCE_BUILD:-0}" != 1 ]; then
    if have_image "$UPSTREAM_IMAGE" || timeout 120 $ENGINE pull -q "$UPSTREAM_IMAGE" >/dev/null 2>&1; then
        $ENGINE tag "$UPSTREAM_IMAGE" "$IMAGE"
        log "image $IMAGE: $UPSTREAM_IMAGE (registry), nothing built"
        exit 0
    fi
    log "$UPSTREAM_IMAGE cannot be pulled: building $IMAGE from $DOCKERFILE"
fi

# -- base -----------------------------------------------------------------------------------------------------------
build_local_base() {
    local started tmp
    started="$(now)"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "$SUDO rm -rf '$tmp'" EXIT
    log "no registry: making $LOCAL_BASE with debootstrap ($DEBIAN_SUITE, minbase + python3, python3-venv), ~1-2 min"
    $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$DEBIAN_SUITE" "$tmp/rootfs" "$DEBIAN_MIRROR" >"$tmp/debootstrap.log" 2>&1 || {
        tail -n 30 "$tmp/debootstrap.log" >&2
        log "debootstrap failed"
        exit 1
    }
    # What a slim image leaves out: package caches and lists, documentation, translations.
    $SUDO rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/cache/apt/*.bin \
        "$tmp"/rootfs/var/lib/apt/lists/* "$tmp"/rootfs/usr/share/doc/* "$tmp"/rootfs/usr/share/man/* \
        "$tmp"/rootfs/usr/share/info/* "$tmp"/rootfs/usr/share/locale/* "$tmp"/rootfs/var/log/*
    $SUDO tar -C "$tmp/rootfs" -c . | $ENGINE import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$LOCAL_BASE" >/dev/null
    $SUDO rm -rf "$tmp"
    trap - EXIT
    log "made $LOCAL_BASE in $(since "$started") s"
}

build_local_build_base() {
    local tmp certs
    certs=()
    if [ -d "$EXTRA_CA_DIR" ]; then
        while IFS= read -r -d '' f; do certs+=("$f"); done < <(find "$EXTRA_CA_DIR" -name '*.crt' -print0)
    fi
    if [ "${#certs[@]}" -eq 0 ]; then
        log "no extra CA certificates in $EXTRA_CA_DIR: the builder stage uses $LOCAL_BASE itself"
        LOCAL_BUILD_BASE="$LOCAL_BASE"
        return
    fi
    tmp="$(mktemp -d)"
    cp "${certs[@]}" "$tmp/"
    # For the local builder stage only: pip (and anything else) trusts this host's extra CAs.
    cat >"$tmp/Containerfile" <<EOF
FROM $LOCAL_BASE
COPY *.crt /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
EOF
    $ENGINE build --quiet -t "$LOCAL_BUILD_BASE" -f "$tmp/Containerfile" "$tmp" >/dev/null
    rm -rf "$tmp"
    log "made $LOCAL_BUILD_BASE (+ ${#certs[@]} CA certificate(s) from $EXTRA_CA_DIR; builder stage only)"
}

base_started="$(now)"
BUILDER_IMAGE="${BUILDER_IMAGE:-}"
if [ -n "${BASE_IMAGE:-}" ]; then
    log "base: $BASE_IMAGE (from BASE_IMAGE)"
elif have_image "$PUBLIC_BASE" || timeout 120 $ENGINE pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
    BASE_IMAGE="$PUBLIC_BASE"
    log "base: $BASE_IMAGE (registry)"
else
    if [ "$REBUILD_BASE" = 1 ] || ! have_image "$LOCAL_BASE"; then
        build_local_base
        $ENGINE image rm "$LOCAL_BUILD_BASE" >/dev/null 2>&1 || true
    else
        log "base: $LOCAL_BASE (cached; REBUILD_BASE=1 makes it again)"
    fi
    if ! have_image "$LOCAL_BUILD_BASE"; then build_local_build_base; fi
    BASE_IMAGE="$LOCAL_BASE"
    BUILDER_IMAGE="${BUILDER_IMAGE:-$LOCAL_BUILD_BASE}"
fi
BUILDER_IMAGE="${BUILDER_IMAGE:-$BASE_IMAGE}"
base_s="$(since "$base_started")"

# -- image ----------------------------------------------------------------------------------------------------------
build_started="$(now)"
log "building $IMAGE from $DOCKERFILE (base $BASE_IMAGE, builder $BUILDER_IMAGE)"
args=(build -f "$DOCKERFILE" -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE")
if [ "$ENGINE" = podman ]; then args+=(--format docker --layers); fi
# shellcheck disable=SC2086
$ENGINE "${args[@]}" ${BUILD_ARGS:-} . >&2
build_s="$(since "$build_started")"

size_bytes="$($ENGINE image inspect --format '{{.Size}}' "$IMAGE")"
size_mib="$(awk -v b="$size_bytes" 'BEGIN { printf "%.0f", b / 1048576 }')"
log "base step ${base_s} s, image build ${build_s} s"
log "image $IMAGE: ${size_mib} MiB (${size_bytes} bytes, uncompressed)"
