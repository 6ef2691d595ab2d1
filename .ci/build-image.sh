#!/usr/bin/env bash
# Builds the Dockerfile with buildah: no Docker engine, no daemon (vfs storage, chroot isolation).
#
#   .ci/build-image.sh                      the default image: on a Debian trixie base (Debian's
#                                           python3, 3.13) made here with debootstrap from
#                                           Debian's archive; no image registry needed
#   BASE_SUITE=bookworm .ci/build-image.sh  the same on Debian 12 (python3 3.11)
#   BASE_IMAGE=python:3.13-slim-trixie ...  any other base, pulled (INIT_IMAGE: where tini-static
#                                           comes from; the Dockerfile says which images serve)
#   PUSH=1 IMAGE=registry/name:tag ...      also push it (buildah push, your registry login)
#   OCI_ARCHIVE=path.tar ...                also write it as an OCI archive (make release)
#
# Environment: IMAGE (default rdma-shared-dp:<version>), VERSION (default: pyproject's),
# IMAGE_STORE (buildah's storage, default /var/cache/rdma-shared-dp/containers: outside the
# repo, so the base image and the layer cache survive a fresh clone and make a warm build fast).
# The local base is tagged by a hash of its recipe below: change the recipe, get a new base.
# Prints `image=<ref>` last. Needs root and .ci/install-image-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)}"
IMAGE="${IMAGE:-rdma-shared-dp:${VERSION}}"
IMAGE_STORE="${IMAGE_STORE:-/var/cache/rdma-shared-dp/containers}"
export BUILDAH_ISOLATION=chroot
mkdir -p "$IMAGE_STORE"
bah() { buildah --root "$IMAGE_STORE/storage" --runroot "$IMAGE_STORE/run" --storage-driver vfs "$@"; }

# The local base: what the Dockerfile needs of a base (python3 with venv) plus what the Network
# Operator's DaemonSet needs of the image (sh, grep: in minbase; lsmod: kmod), libudev for pyudev,
# and tini, whose tini-static the init stage copies.
BASE_SUITE="${BASE_SUITE:-trixie}"
BASE_PACKAGES=python3,python3-venv,kmod,libudev1,tini
BASE_RECIPE="v1 minbase $BASE_SUITE $BASE_PACKAGES; docs, apt lists and caches dropped"

local_base() {
    local key ref mirror work ctr
    key=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-12)
    ref="localhost/rdma-shared-dp-base:${BASE_SUITE}-${key}"
    if bah inspect --type image "$ref" >/dev/null 2>&1; then
        # Also under the suite's name alone: the Dockerfile's default BASE_IMAGE.
        bah tag "$ref" "localhost/rdma-shared-dp-base:${BASE_SUITE}" >/dev/null
        echo "$ref"
        return
    fi
    # The Debian mirror this machine's apt already uses.
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
        | grep -v security | head -n 1 || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "'"$BASE_SUITE"'" {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null)
    [ -n "$mirror" ] || { echo "build-image: no Debian mirror in the apt sources" >&2; exit 1; }
    work=$(mktemp -d "$IMAGE_STORE/base.XXXXXX")
    trap 'rm -rf "$work"' RETURN
    echo "build-image: debootstrap $BASE_SUITE ($BASE_PACKAGES), once per recipe" >&2
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$work/rootfs" \
        "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 20 "$work/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$work"/rootfs/var/cache/apt/*.bin "$work"/rootfs/var/cache/apt/archives/*.deb \
        "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/usr/share/doc/* \
        "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/info/* "$work"/rootfs/var/log/*
    ctr=$(bah from scratch)
    bah copy "$ctr" "$work/rootfs" / >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/sh --label "rdma-shared-dp.base-recipe=$BASE_RECIPE" "$ctr"
    bah commit --quiet --rm "$ctr" "$ref" >/dev/null
    bah tag "$ref" "localhost/rdma-shared-dp-base:${BASE_SUITE}" >/dev/null
    echo "$ref"
}

args=(--build-arg "VERSION=$VERSION")
if [ -z "${BASE_IMAGE:-}" ]; then
    base=$(local_base)
    args+=(--build-arg "BASE_IMAGE=$base" --build-arg "INIT_IMAGE=${INIT_IMAGE:-$base}" --pull=false)
else
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [ -z "${INIT_IMAGE:-}" ] || args+=(--build-arg "INIT_IMAGE=$INIT_IMAGE")
fi
# A machine behind a TLS-inspecting proxy has its own CA: lend it to pip in the build stage only.
host_ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
    args+=(--volume "$host_ca:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem)
fi

# vfs stores each layer as a full copy, so superseded builds would fill the disk run by run. Their
# untagged images are also the next build's layer cache: drop them only past a size (the tagged
# base stays, so the next build skips debootstrap and only redoes the pip step).
if [ "$(du -sm "$IMAGE_STORE/storage" 2>/dev/null | cut -f1)" -gt "${IMAGE_STORE_MAX_MB:-6000}" ]; then
    bah rmi --prune >/dev/null
fi
bah bud --layers --isolation chroot --format oci "${args[@]}" -t "$IMAGE" -f Dockerfile . >&2
if [ -n "${PUSH:-}" ]; then
    bah push "$IMAGE" "docker://$IMAGE" >&2
fi
if [ -n "${OCI_ARCHIVE:-}" ]; then
    rm -f "$OCI_ARCHIVE"
    bah push --quiet "$IMAGE" "oci-archive:$OCI_ARCHIVE:$IMAGE" >&2
fi
echo "image=$IMAGE"
