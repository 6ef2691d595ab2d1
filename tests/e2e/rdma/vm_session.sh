#!/bin/sh
# Runs inside the soft-RoCE VM as root, started by its PID 1 (tests/e2e/rdma/vm_init.sh) with the
# work tree on /work (read-only) and the host's result folder on /out. Brings up the two virtio
# NICs, puts an rxe device on each, then runs the scenarios (vm_scenarios.py), which write
# /out/results.json. Lean on purpose: the VM runs under TCG, several times slower than the host.
set -u
PATH=/opt/rdma-venv/bin:/usr/sbin:/usr/bin:/sbin:/bin
PYTHONPATH=/work
PYTHONDONTWRITEBYTECODE=1
export PATH PYTHONPATH PYTHONDONTWRITEBYTECODE
up() { cut -d' ' -f1 /proc/uptime; }

# crc32_generic first: without a crc32 implementation `rdma link add` fails with ENOENT.
for m in crc32_generic virtio_net ib_core ib_uverbs ib_umad rdma_ucm rdma_rxe; do
    modprobe "$m" || echo "rdma-vm: modprobe $m failed"
done
ip link set lo up
ip link set eth0 up && ip addr add 10.11.0.1/24 dev eth0
ip link set eth1 up && ip addr add 10.12.0.1/24 dev eth1
rdma link add rxe0 type rxe netdev eth0
rdma link add rxe1 type rxe netdev eth1
echo "rdma-vm: rxe0 rxe1 ready after $(up) s"
python3 /work/tests/e2e/rdma/vm_scenarios.py /out
rc=$?
echo "rdma-vm: scenarios done after $(up) s rc=$rc"
exit $rc
