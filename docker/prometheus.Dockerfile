# Prometheus from Debian's package, for docker/compose.yaml where the upstream image (prom/prometheus) cannot be
# pulled. `make prometheus-image` builds it with docker/build-local.sh on the same Debian base as the serve image
# (a local one made with debootstrap where no registry answers):
#
#   docker build -f docker/prometheus.Dockerfile -t odetoode/prometheus:2.42 .
#
# Debian 12 "bookworm" ships Prometheus 2.42, the upstream image in compose.yaml is 3.5: docs/deploy.md, "Compose",
# says why that does not matter to this stack. Runs like the upstream image: as nobody (65534), data in /prometheus,
# the configuration in /etc/prometheus/prometheus.yml (compose.yaml mounts its own over the package's example).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The package's maintainer scripts would start a Prometheus inside the build: a policy-rc.d that refuses service
# starts prevents it (Debian's own images have one, a base made with debootstrap has not). The version is the one the
# base's Debian release ships (2.42 on bookworm), printed at the end of the step and reported by the API.
# hadolint ignore=DL3008
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
    && chmod 755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /prometheus \
    && chown 65534:65534 /prometheus \
    && prometheus --version
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
