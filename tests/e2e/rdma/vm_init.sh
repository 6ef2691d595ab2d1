#!/bin/sh
# PID 1 of the soft-RoCE VM (installed as /sbin/rdma-vm-init by .ci/install-rdma-vm.sh).
# Mounts the kernel's file systems and the two 9p shares the host offers (`src`: the work tree,
# read-only; `out`: results), then runs the session script from the work tree, so that changing
# what the VM does needs no image rebuild. Whatever happens, the VM powers off at the end: the
# host reads `out/rc` and the serial console.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -o remount,rw /
echo "rdma-vm: kernel $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"
for m in 9pnet_virtio 9p; do modprobe "$m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro src /work
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /out
if [ -x /work/tests/e2e/rdma/vm_session.sh ]; then
    /work/tests/e2e/rdma/vm_session.sh >/out/session.log 2>&1
    echo $? >/out/rc
else
    echo "rdma-vm: no /work/tests/e2e/rdma/vm_session.sh in the shared work tree"
    echo 127 >/out/rc
fi
sync
echo "rdma-vm: done rc=$(cat /out/rc)"
echo o >/proc/sysrq-trigger
sleep 5
