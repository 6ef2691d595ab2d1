#!/usr/bin/env bash
# Tools for the DRA suite (tests/e2e/dra): one control-plane binary built from Go modules,
# $E2E_CACHE/dra-<k8s version>/control-plane, with the links etcd, kube-apiserver, kube-scheduler
# and kube-controller-manager next to it (it dispatches on the name it is called by, like the old
# hyperkube: one link step and one binary instead of four). The kubelet and containerd 2 come from
# .ci/install-kubelet-e2e.sh. Cached by version; the Go build cache is reused, so a warm run takes
# a second and prints nothing; a cold run takes minutes (kube-apiserver is most of it).
#
#   bash .ci/install-dra-e2e.sh          # control plane, then the kubelet suite's tools
#   bash .ci/install-dra-e2e.sh control-plane
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../tests/e2e/dra/versions.env
. "$here/tests/e2e/dra/versions.env"
E2E_CACHE=${E2E_CACHE:-/var/cache/rdma-shared-dp-e2e}
export PATH="/usr/local/go/bin:$PATH"
COMMANDS="etcd kube-apiserver kube-scheduler kube-controller-manager"

log() { echo "install-dra-e2e: $*" >&2; }

# The wrapper's main: each command's own main, chosen by basename(argv[0]).
write_main() {
    cat >main.go <<'GO'
// Command control-plane is etcd, kube-apiserver, kube-scheduler and kube-controller-manager in
// one binary, chosen by the name it is called by (a link named after the command).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	switch name := filepath.Base(os.Args[0]); name {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	default:
		fmt.Fprintf(os.Stderr, "control-plane: unknown command %q (link me as etcd, kube-apiserver, kube-scheduler or kube-controller-manager)\n", name)
		os.Exit(2)
	}
}
GO
}

# Like the kubelet's wrapper (.ci/install-kubelet-e2e.sh): the release's go.mod replaces the
# staging modules with ./staging paths the module zip lacks; pin each to its v0.MINOR.PATCH.
build_control_plane() {
    local ver=$KUBERNETES_VERSION out="$E2E_CACHE/dra-$KUBERNETES_VERSION"
    if [ -x "$out/control-plane" ]; then
        local c ok=1
        for c in $COMMANDS; do [ -L "$out/$c" ] || ok=0; done
        [ "$ok" = 1 ] && return 0
    fi
    command -v go >/dev/null 2>&1 || { log "go not found"; return 1; }
    local staging="v0.${ver#v1.}" dir="$E2E_CACHE/src/dra-$ver" start=$SECONDS
    log "building the control plane $ver with etcd $ETCD_VERSION (minutes when cold)"
    rm -rf "$dir" "$out.tmp" && mkdir -p "$dir" "$out.tmp"
    (
        cd "$dir"
        go mod download -json "k8s.io/kubernetes@$ver" >/dev/null
        local mod
        mod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$ver.mod
        {
            echo "module rdma-shared-dp-e2e/control-plane"
            echo
            sed -n 's/^go \(.*\)/go \1/p' "$mod" | head -1
            echo
            echo "require ("
            echo "	k8s.io/kubernetes $ver"
            echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
            echo ")"
            echo
            echo "replace ("
            sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$mod"
            echo ")"
        } >go.mod
        write_main
        go mod tidy >/dev/null 2>&1 || go mod tidy
        local got
        got=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
        if [ "$got" != "$ETCD_VERSION" ]; then
            log "k8s.io/kubernetes $ver needs etcd server $got, versions.env says $ETCD_VERSION"
            exit 1
        fi
        local pkg=k8s.io/component-base/version
        CGO_ENABLED=0 go build -o "$out.tmp/control-plane" -ldflags "-s -w \
            -X $pkg.gitVersion=$ver -X $pkg.gitMajor=1 \
            -X $pkg.gitMinor=$(echo "$ver" | cut -d. -f2) -X $pkg.gitTreeState=clean \
            -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" .
    )
    local c
    for c in $COMMANDS; do ln -s control-plane "$out.tmp/$c"; done
    rm -rf "$out" && mv "$out.tmp" "$out"
    log "control plane built in $((SECONDS - start)) s"
}

mkdir -p "$E2E_CACHE"
# Two runs (CI and a developer, or two worktrees) must not build into the same directories.
exec 9>"$E2E_CACHE/.install-dra-e2e.lock"
flock 9
case "${1:-all}" in
    control-plane) build_control_plane ;;
    all)
        build_control_plane
        bash "$here/.ci/install-kubelet-e2e.sh"
        ;;
    *) log "unknown step $1"; exit 2 ;;
esac
