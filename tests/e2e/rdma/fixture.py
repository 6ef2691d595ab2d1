"""Turn the soft-RoCE VM's sysfs capture into the committed fixture (run by hand, on the host).

    python -m tests.e2e.rdma.fixture /tmp/rdma-vm-out/capture.tar \
        tests/fixtures/real-sysfs/debian12-rxe

`make e2e-rdma` leaves `capture.tar` in its result folder (vm_scenarios.py `capture`: the rxe
devices, their netdevs, the network PCI functions, the char-device classes, ib_core's
parameters, and `/dev/infiniband` as `major:minor` files). As in the other real-sysfs fixtures,
each symlink is stored flattened: a file whose whole content is its relative target, which
tests/unit/test_discovery_real.py's `materialise` turns back into a link.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path


def flatten(src: Path, dest: Path) -> int:
    """Copy `src` to `dest` with every symlink written as a file holding its target."""
    links = 0
    if dest.exists():
        shutil.rmtree(dest)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                (dest / rel / name).write_text(os.readlink(path))
                links += 1
            elif path.is_file():
                shutil.copyfile(path, dest / rel / name)
        # os.walk does not descend into links to folders: they were written above.
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return links


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    archive, dest = Path(argv[0]), Path(argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="tar")
        links = flatten(Path(tmp) / "capture", dest)
    print(f"wrote {dest} ({links} links flattened)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
