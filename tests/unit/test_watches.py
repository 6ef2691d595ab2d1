"""Config and kubelet watches, on real files, symlink swaps and unix sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from supervisor.watch.config import ConfigWatch
from supervisor.watch.kubelet import KubeletSocketWatch


def _configmap_layout(root: Path, content: bytes, version: str) -> None:
    """Lay out a mounted ConfigMap the way the kubelet does: config.json -> ..data/config.json."""
    data_dir = root / f"..{version}"
    data_dir.mkdir()
    (data_dir / "config.json").write_bytes(content)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, root / "..data")
    if not (root / "config.json").is_symlink():
        (root / "config.json").symlink_to("..data/config.json")


def test_configmap_symlink_swap_is_noticed(tmp_path: Path) -> None:
    _configmap_layout(tmp_path, b'{"a": 1}', "v1")
    watch = ConfigWatch(tmp_path / "config.json")
    assert watch.poll() == b'{"a": 1}'
    assert watch.poll() is None
    _configmap_layout(tmp_path, b'{"a": 2}', "v2")
    assert watch.poll() == b'{"a": 2}'
    assert watch.poll() is None


def test_same_content_rewritten_is_not_a_change(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_bytes(b"x")
    watch = ConfigWatch(f)
    watch.mark_seen(b"x")
    f.write_bytes(b"x")
    assert watch.poll() is None


def test_missing_file_is_no_change_and_says_why(tmp_path: Path) -> None:
    watch = ConfigWatch(tmp_path / "absent.json")
    assert watch.poll() is None
    data, why = watch.read()
    assert data is None and "absent.json" in why


def _serve(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def test_recreated_kubelet_socket_is_noticed_once(tmp_path: Path) -> None:
    sock_path = tmp_path / "kubelet.sock"
    first = _serve(sock_path)
    watch = KubeletSocketWatch(tmp_path)
    assert not watch.poll()
    first.close()
    sock_path.unlink()
    assert not watch.poll()  # gone is not a restart yet
    second = _serve(sock_path)
    try:
        assert watch.poll()
        assert not watch.poll()
    finally:
        second.close()


def test_kubelet_socket_appearing_counts(tmp_path: Path) -> None:
    watch = KubeletSocketWatch(tmp_path)
    s = _serve(tmp_path / "kubelet.sock")
    try:
        assert watch.poll()
    finally:
        s.close()


def test_unreadable_config_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "config.json"
    f.write_bytes(b"x")
    watch = ConfigWatch(f)
    assert watch.poll() == b"x"
    f.unlink()
    with caplog.at_level("WARNING"):
        assert watch.poll() is None
        assert watch.poll() is None
    warnings = [r for r in caplog.records if "keeping the running config" in r.getMessage()]
    assert len(warnings) == 1
    f.write_bytes(b"y")
    assert watch.poll() == b"y"
