#!/usr/bin/env bash
# The soft-RoCE VM of `make e2e-rdma` (docs/e2e-rdma.md): qemu from Debian on the host, and a
# Debian 12 disk image with Debian's kernel (rdma_rxe, the rdma cgroup), rdma-core and its tools,
# runc, python3 and the project's runtime dependencies in /opt/rdma-venv. The project itself is
# not in the image: the VM mounts the work tree over 9p, so a code change needs no rebuild.
#
# Cached in $RDMA_VM_CACHE (kernel, initrd, rootfs.ext4, inputs.sha256); rebuilt only when its
# inputs change (this script, tests/e2e/rdma/vm_init.sh, the dependency list of pyproject.toml).
# A cold build takes minutes (debootstrap and pip), a warm run is a hash compare.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
RDMA_VM_CACHE=${RDMA_VM_CACHE:-/var/cache/rdma-shared-dp-e2e/rdma-vm}
MIRROR=${RDMA_VM_MIRROR:-http://deb.debian.org/debian}
log() { echo "install-rdma-vm: $*" >&2; }

# Debian's packages inside the VM: kernel, RDMA user space, a container runtime, Python.
PACKAGES=(
    kmod iproute2 procps ca-certificates
    rdma-core ibverbs-providers ibverbs-utils perftest rdmacm-utils
    runc python3 python3-venv
)

host_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

runtime_deps() {
    # The [project] dependencies of pyproject.toml, one per line.
    python3 - "$here/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
}

inputs_hash() {
    {
        cat "$here/.ci/install-rdma-vm.sh" "$here/tests/e2e/rdma/vm_init.sh"
        runtime_deps
    } | sha256sum | cut -d' ' -f1
}

build() {
    local root="$RDMA_VM_CACHE/build/root" out="$RDMA_VM_CACHE/build"
    rm -rf "$out" && mkdir -p "$root"
    log "debootstrap bookworm (minutes when cold)"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        bookworm "$root" "$MIRROR" >"$out/debootstrap.log" 2>&1 ||
        { tail -20 "$out/debootstrap.log" >&2; return 1; }
    # A small initrd: only what finds and mounts the root disk (the rest loads from the disk).
    mkdir -p "$root/etc/initramfs-tools/conf.d"
    printf 'MODULES=list\n' >"$root/etc/initramfs-tools/conf.d/small"
    printf 'virtio_pci\nvirtio_blk\next4\n' >"$root/etc/initramfs-tools/modules"
    mount --bind /proc "$root/proc"
    trap 'umount "$RDMA_VM_CACHE/build/root/proc" 2>/dev/null || true' EXIT
    log "kernel, initrd"
    chroot "$root" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Options::=--force-confold \
        linux-image-amd64 initramfs-tools' >"$out/kernel.log" 2>&1 ||
        { tail -20 "$out/kernel.log" >&2; return 1; }
    log "python runtime dependencies"
    # Downloaded by the host's pip (its index and certificates are set up here), installed
    # offline: wheels for the VM's CPython 3.11 on glibc 2.36 (Debian 12, as the host).
    local wheels="$out/wheels"
    # shellcheck disable=SC2046
    python3 -m pip download -q --only-binary=:all: --python-version 3.11 -d "$wheels" \
        $(runtime_deps | tr '\n' ' ') pytest >"$out/pip.log" 2>&1 ||
        { tail -20 "$out/pip.log" >&2; return 1; }
    mkdir -p "$root/tmp/wheels" && cp "$wheels"/*.whl "$root/tmp/wheels/"
    chroot "$root" python3 -m venv /opt/rdma-venv
    chroot "$root" sh -c '/opt/rdma-venv/bin/pip install -q --no-index --no-cache-dir \
        /tmp/wheels/*.whl && rm -rf /tmp/wheels' >>"$out/pip.log" 2>&1 ||
        { tail -20 "$out/pip.log" >&2; return 1; }
    umount "$root/proc"
    trap - EXIT
    install -m 0755 "$here/tests/e2e/rdma/vm_init.sh" "$root/sbin/rdma-vm-init"
    mkdir -p "$root/work" "$root/out"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
    cp "$root"/boot/initrd.img-* "$out/initrd.img"
    basename "$root"/lib/modules/* >"$out/kernel-version"
    log "rootfs.ext4"
    mkfs.ext4 -q -F -L rdmavm -d "$root" "$out/rootfs.ext4" 3G
    rm -rf "$root"
}

main() {
    host_tools
    local want
    want=$(inputs_hash)
    if [ -f "$RDMA_VM_CACHE/inputs.sha256" ] && [ "$(cat "$RDMA_VM_CACHE/inputs.sha256")" = "$want" ] &&
        [ -f "$RDMA_VM_CACHE/rootfs.ext4" ]; then
        return 0
    fi
    mkdir -p "$RDMA_VM_CACHE"
    local start=$SECONDS
    build
    mv -f "$RDMA_VM_CACHE/build/"{vmlinuz,initrd.img,rootfs.ext4,kernel-version} "$RDMA_VM_CACHE/"
    rm -rf "$RDMA_VM_CACHE/build"
    echo "$want" >"$RDMA_VM_CACHE/inputs.sha256"
    log "built in $((SECONDS - start)) s: $RDMA_VM_CACHE (kernel $(cat "$RDMA_VM_CACHE/kernel-version"))"
}

main "$@"
