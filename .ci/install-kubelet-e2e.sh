#!/usr/bin/env bash
# Tools for the real-kubelet suite (tests/e2e/kubelet): containerd 1.6, runc and a static busybox
# from Debian, plus upstream kubelets and a containerd 2.x built from their Go modules. Binaries are
# cached by version in $E2E_CACHE, and the Go build cache is reused, so a warm run takes seconds
# and prints nothing; a cold run takes minutes (mostly compiling kubelet on 2 cores).
#
#   bash .ci/install-kubelet-e2e.sh            # everything
#   bash .ci/install-kubelet-e2e.sh kubelet v1.35.4
#   bash .ci/install-kubelet-e2e.sh containerd v2.4.2
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../tests/e2e/kubelet/versions.env
. "$here/tests/e2e/kubelet/versions.env"
E2E_CACHE=${E2E_CACHE:-/var/cache/rdma-shared-dp-e2e}
export PATH="/usr/local/go/bin:$PATH"

log() { echo "install-kubelet-e2e: $*" >&2; }

apt_tools() {
    local missing=()
    command -v containerd >/dev/null 2>&1 || missing+=(containerd)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    # Only the static build can be copied into an image on its own.
    [ -e /usr/share/doc/busybox-static ] || missing+=(busybox-static)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Debian starts the service; the suite runs its own instances on private sockets.
        systemctl disable --now containerd >/dev/null 2>&1 || true
    fi
}

# The staging modules (k8s.io/api, client-go, ...) are replaced by ./staging paths in the
# release's go.mod, and the module zip has no staging/: point each at its published v0.MINOR.PATCH.
build_kubelet() {
    local ver=$1 out="$E2E_CACHE/kubelet-$1"
    [ -x "$out" ] && return 0
    command -v go >/dev/null 2>&1 || { log "go not found"; return 1; }
    local staging="v0.${ver#v1.}" dir="$E2E_CACHE/src/kubelet-$ver"
    log "building kubelet $ver (minutes when cold)"
    rm -rf "$dir" && mkdir -p "$dir"
    (
        cd "$dir"
        go mod download -json "k8s.io/kubernetes@$ver" >/dev/null
        local mod
        mod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$ver.mod
        {
            echo "module rdma-shared-dp-e2e/kubelet"
            echo
            sed -n 's/^go \(.*\)/go \1/p' "$mod" | head -1
            echo
            echo "require k8s.io/kubernetes $ver"
            echo
            echo "replace ("
            sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$mod"
            echo ")"
        } >go.mod
        go get "k8s.io/kubernetes/cmd/kubelet@$ver" >/dev/null 2>&1 || go get "k8s.io/kubernetes/cmd/kubelet@$ver"
        local pkg=k8s.io/component-base/version
        CGO_ENABLED=0 go build -o "$out.tmp" -ldflags "-s -w -X $pkg.gitVersion=$ver -X $pkg.gitMajor=1 \
            -X $pkg.gitMinor=$(echo "$ver" | cut -d. -f2) -X $pkg.gitTreeState=clean" \
            k8s.io/kubernetes/cmd/kubelet
    )
    mv "$out.tmp" "$out"
}

# containerd 2.x (CDI on by default) and its runc shim, into $E2E_CACHE/containerd-<ver>/.
build_containerd2() {
    local ver=$1 out="$E2E_CACHE/containerd-$1"
    [ -x "$out/containerd" ] && [ -x "$out/containerd-shim-runc-v2" ] && return 0
    command -v go >/dev/null 2>&1 || { log "go not found"; return 1; }
    local dir="$E2E_CACHE/src/containerd-$ver" m=github.com/containerd/containerd/v2
    log "building containerd $ver"
    rm -rf "$dir" "$out.tmp" && mkdir -p "$dir" "$out.tmp"
    (
        cd "$dir"
        printf 'module rdma-shared-dp-e2e/containerd\n\ngo 1.26\n' >go.mod
        go get "$m/cmd/containerd@$ver" >/dev/null 2>&1 || go get "$m/cmd/containerd@$ver"
        # No cgo: the btrfs/devmapper/zfs snapshotters are not needed (overlayfs/native are).
        CGO_ENABLED=0 go build -tags "no_btrfs no_devmapper no_zfs" -ldflags "-s -w \
            -X $m/version.Version=$ver" -o "$out.tmp/" "$m/cmd/containerd" \
            "$m/cmd/containerd-shim-runc-v2"
    )
    rm -rf "$out" && mv "$out.tmp" "$out"
}

mkdir -p "$E2E_CACHE"
case "${1:-all}" in
    apt) apt_tools ;;
    kubelet) build_kubelet "$2" ;;
    containerd) build_containerd2 "$2" ;;
    all)
        apt_tools
        for v in $KUBELET_VERSIONS; do build_kubelet "$v"; done
        build_containerd2 "$CONTAINERD2_VERSION"
        ;;
    *) log "unknown step $1"; exit 2 ;;
esac
