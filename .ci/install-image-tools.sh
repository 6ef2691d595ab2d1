#!/usr/bin/env bash
# Installs what `make image` needs on a Debian 12 machine, as root: buildah (daemonless, runs with
# vfs storage and chroot isolation, so no Docker engine, no fuse, no user namespaces), debootstrap
# (to make the Debian base locally when no image registry is reachable). Quick when present.
set -euo pipefail
wanted=()
command -v buildah >/dev/null 2>&1 || wanted+=(buildah)
command -v debootstrap >/dev/null 2>&1 || wanted+=(debootstrap)
if [ "${#wanted[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
fi
