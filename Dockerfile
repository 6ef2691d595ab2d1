# syntax=docker/dockerfile:1
# Image of rdma-shared-dp. The default base is Debian trixie with Debian's python3 (3.13, where
# the zygote's objects are immortal: docs/worker.md), made from Debian's archive with debootstrap
# by .ci/build-image.sh (`make image`), which CI builds and runs (tests/e2e/test_image.py).
# Other bases with Python 3.11+ and pip, musl or glibc, are a BASE_IMAGE away (docs/deployment.md
# says which were tried):
#   make image BASE_IMAGE=python:3.13-slim-trixie IMAGE=registry/name:tag
#   docker build --build-arg BASE_IMAGE=registry.access.redhat.com/ubi9/python-312 -t ... .
# Python dependencies come from requirements.lock only, every file checked against its hash, so
# one commit gives one set of dependencies. The final stage gets a virtualenv and a static tini;
# its only package-manager steps add libudev on Alpine bases and kmod (lsmod) on Debian-based
# bases that lack it, each skipped elsewhere.
# It runs as root by necessity: the plugin creates sockets in the kubelet's root-owned folders and
# reads /dev and /sys of the host (docs/security.md).

# The base .ci/build-image.sh makes (python3, python3-venv, kmod, libudev1, tini on trixie); not
# in any registry: `docker build` needs a BASE_IMAGE.
ARG BASE_IMAGE=localhost/rdma-shared-dp-base:trixie
# Only a source of a statically linked tini (PID 1: reaps zombies, forwards signals). Static, so
# the one binary runs on every base, and no base needs a package manager that carries tini.
# Debian's `tini` package has it (/usr/bin/tini-static), so the default base serves; an Alpine
# image (e.g. alpine:3.22) serves through its tini-static package.
ARG INIT_IMAGE=localhost/rdma-shared-dp-base:trixie

FROM ${INIT_IMAGE} AS init
# On Alpine, the package's version follows the pinned Alpine release.
# hadolint ignore=DL3018
RUN if [ -x /usr/bin/tini-static ]; then cp /usr/bin/tini-static /sbin/tini-static; \
    else apk add --no-cache tini-static; fi \
 && /sbin/tini-static --version

FROM ${BASE_IMAGE} AS build
# Some bases (UBI's Python images) default to a non-root user that cannot write /opt.
# hadolint ignore=DL3002
USER 0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only for builds behind a TLS-inspecting proxy (.ci/build-image.sh mounts its CA there); unset
# otherwise, and this stage is not part of the image.
ARG PIP_CERT
# .dockerignore admits only the packaging files, the lock file and the Python packages.
COPY . .
# Every dependency, the build backend included, from the lock file's wheels, each checked against
# its hash (musllinux and manylinux wheels exist for all of them; a source build would need a
# compiler this stage does not have); then the project itself, built with that backend and
# nothing fetched. pip and setuptools leave the venv.
# pip's installation reports (name, version, wheel hash, licence of each) stay in the image:
# `make release` makes the SBOM from them (.ci/sbom.py).
RUN python3 -m venv /opt/rdma-shared-dp \
 && mkdir /opt/rdma-shared-dp/pip-report \
 && /opt/rdma-shared-dp/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock \
      --report /opt/rdma-shared-dp/pip-report/dependencies.json \
 && /opt/rdma-shared-dp/bin/pip install --no-deps --no-build-isolation --no-index /src \
      --report /opt/rdma-shared-dp/pip-report/project.json \
 && /opt/rdma-shared-dp/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/rdma-shared-dp/bin/rdma-shared-dp version

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rdma-shared-dp" \
      org.opencontainers.image.description="Shares a node's RDMA HCAs among pods (Kubernetes device plugin)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# Root on purpose (kubelet sockets, host /dev and /sys), also on bases whose default user is not.
# hadolint ignore=DL3002
USER 0
COPY --from=init /sbin/tini-static /usr/local/bin/tini
# pyudev, which the supervisor's uevent monitor uses, loads libudev.so.1 at run time. Alpine's
# Python images lack it (glibc bases with systemd-libs or libudev1 have it); without it device
# changes are only seen by the periodic rescan. The one package-manager step, only on Alpine.
# hadolint ignore=DL3018
RUN if command -v apk >/dev/null 2>&1; then apk add --no-cache eudev-libs; fi
# The NVIDIA Network Operator's init container runs `sh -c "lsmod | grep mlx5_core"` in this
# image: Alpine's busybox has all three; Debian-based bases lack lsmod (package kmod).
# hadolint ignore=DL3008
RUN if ! command -v lsmod >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends kmod \
      && rm -rf /var/lib/apt/lists/*; fi \
 && command -v sh && command -v grep && command -v lsmod
# Same base as the build stage, so the venv's interpreter link points at the same python3.
COPY --from=build /opt/rdma-shared-dp /opt/rdma-shared-dp
# The Network Operator's DaemonSet runs `command: ["/bin/k8s-rdma-shared-dp"]` (the Go image's
# path), which bypasses tini: the plugin then does PID 1's work itself (supervisor/pid1.py).
RUN ln -s /opt/rdma-shared-dp/bin/rdma-shared-dp /bin/k8s-rdma-shared-dp \
 && /bin/k8s-rdma-shared-dp --version
ENV PATH="/opt/rdma-shared-dp/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /
EXPOSE 9478
# No arguments runs the plugin (`run` is the default subcommand), like the Go plugin's image.
# Manifests should set `args`, not `command`; with `command` the plugin is its own init.
ENTRYPOINT ["/usr/local/bin/tini", "--", "rdma-shared-dp"]
