"""supervisor.rdma_cgroup: per-pod RDMA usage from rdma.current/rdma.max, mapped to pods through
the kubelet's checkpoint, on trees laid out as the kubelet lays out pod cgroups (both drivers).
The same reader runs against a real kernel's rdma cgroup in the soft-RoCE VM suite."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from supervisor.rdma_cgroup import PodRdmaUsage, parse_rdma, pod_cgroups, pod_usage

pytestmark = pytest.mark.unit

UID_A = "0a1b2c3d-0000-4000-8000-00000000000a"
UID_B = "0a1b2c3d-0000-4000-8000-00000000000b"
UID_C = "0a1b2c3d-0000-4000-8000-00000000000c"
SERVED = {"rdma/soft": {"rxe0"}, "rdma/hca": {"mlx5_0"}}


def checkpoint(dp: Path, entries: list[tuple[str, str]]) -> None:
    dp.mkdir(parents=True, exist_ok=True)
    data = {
        "Data": {
            "PodDeviceEntries": [
                {
                    "PodUID": uid,
                    "ContainerName": "c",
                    "ResourceName": res,
                    "DeviceIDs": {"-1": ["0"]},
                }
                for uid, res in entries
            ],
            "RegisteredDevices": {},
        },
        "Checksum": 1,
    }
    (dp / "kubelet_internal_checkpoint").write_text(json.dumps(data))


def pod_cgroup(root: Path, rel: str, current: str, limit: str | None = None) -> Path:
    folder = root / "sys/fs/cgroup" / rel
    folder.mkdir(parents=True)
    (folder / "rdma.current").write_text(current)
    if limit is not None:
        (folder / "rdma.max").write_text(limit)
    return folder


def slice_name(qos: str, uid: str) -> str:
    return f"kubepods-{qos}-pod{uid.replace('-', '_')}.slice"


def test_both_cgroup_drivers_layouts_are_found(tmp_path: Path) -> None:
    pod_cgroup(
        tmp_path, f"kubepods.slice/kubepods-burstable.slice/{slice_name('burstable', UID_A)}", ""
    )
    pod_cgroup(tmp_path, f"kubepods.slice/kubepods-pod{UID_B.replace('-', '_')}.slice", "")
    pod_cgroup(tmp_path, f"kubepods/besteffort/pod{UID_C}", "")
    found = pod_cgroups(str(tmp_path))
    assert sorted(found) == [UID_A, UID_B, UID_C]
    assert found[UID_C].endswith(f"kubepods/besteffort/pod{UID_C}")


def test_rows_for_our_devices_with_limits(tmp_path: Path) -> None:
    checkpoint(tmp_path / "dp", [(UID_A, "rdma/soft"), (UID_B, "rdma/hca"), (UID_C, "other/x")])
    pod_cgroup(
        tmp_path,
        f"kubepods.slice/kubepods-burstable.slice/{slice_name('burstable', UID_A)}",
        "rxe0 hca_handle=2 hca_object=17\nmlx5_0 hca_handle=1 hca_object=3\n",
        "rxe0 hca_handle=max hca_object=100\nmlx5_0 hca_handle=max hca_object=max\n",
    )
    pod_cgroup(tmp_path, f"kubepods/pod{UID_B}", "mlx5_0 hca_handle=1 hca_object=5\n")
    pod_cgroup(tmp_path, f"kubepods/pod{UID_C}", "rxe0 hca_handle=9 hca_object=9\n")
    rows = pod_usage(str(tmp_path), str(tmp_path / "dp"), SERVED)
    assert rows == [
        # A's mlx5_0 is no device of A's resources: skipped. C holds no resource of ours.
        PodRdmaUsage(UID_A, "rdma/soft", "rxe0", 2, 17, None, 100),
        PodRdmaUsage(UID_B, "rdma/hca", "mlx5_0", 1, 5, None, None),
    ]


def test_a_cgroup_gone_between_listing_and_reading_is_skipped(tmp_path: Path) -> None:
    checkpoint(tmp_path / "dp", [(UID_A, "rdma/soft"), (UID_B, "rdma/soft")])
    gone = pod_cgroup(tmp_path, f"kubepods/pod{UID_A}", "rxe0 hca_handle=1 hca_object=1\n")
    pod_cgroup(tmp_path, f"kubepods/pod{UID_B}", "rxe0 hca_handle=1 hca_object=2\n")
    (gone / "rdma.current").unlink()
    rows = pod_usage(str(tmp_path), str(tmp_path / "dp"), SERVED)
    assert [r.pod_uid for r in rows] == [UID_B]


@pytest.mark.parametrize(
    "garbage", ["rxe0 hca_handle=x\n", "rxe0 qp=3\n", "rxe0 hca_handle\n", b"\xff\xfe"]
)
def test_garbled_files_skip_that_pod_with_a_log_line(
    tmp_path: Path, garbage: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint(tmp_path / "dp", [(UID_A, "rdma/soft"), (UID_B, "rdma/soft")])
    bad = pod_cgroup(tmp_path, f"kubepods/pod{UID_A}", "")
    if isinstance(garbage, bytes):
        (bad / "rdma.current").write_bytes(garbage)
    else:
        (bad / "rdma.current").write_text(garbage)
    pod_cgroup(tmp_path, f"kubepods/pod{UID_B}", "rxe0 hca_handle=1 hca_object=2\n")
    with caplog.at_level(logging.WARNING):
        rows = pod_usage(str(tmp_path), str(tmp_path / "dp"), SERVED)
    assert [r.pod_uid for r in rows] == [UID_B]
    assert UID_A in caplog.text or "rdma.current" in caplog.text


@pytest.mark.parametrize("content", ["", "{", '{"Data": 3}', '{"Data": {"PodDeviceEntries": [1]}}'])
def test_a_missing_or_bad_checkpoint_gives_no_rows(tmp_path: Path, content: str) -> None:
    pod_cgroup(tmp_path, f"kubepods/pod{UID_A}", "rxe0 hca_handle=1 hca_object=1\n")
    if content:
        (tmp_path / "dp").mkdir()
        (tmp_path / "dp/kubelet_internal_checkpoint").write_text(content)
    assert pod_usage(str(tmp_path), str(tmp_path / "dp"), SERVED) == []


def test_parse_rdma_reads_the_kernels_format() -> None:
    assert parse_rdma("rxe0 hca_handle=max hca_object=max\nrxe1 hca_handle=0 hca_object=0\n") == {
        "rxe0": {"hca_handle": None, "hca_object": None},
        "rxe1": {"hca_handle": 0, "hca_object": 0},
    }
