"""The one definition of a kubelet restart (common/kubelet_socket.py), the worker's inotify watch,
and which ListAndWatch stream is the kubelet's (StreamHub claims). Real files, no processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import zmq

from common.kubelet_socket import KubeletChange, KubeletSocket
from workers.events import EventQueue, StreamLost, StreamOpened
from workers.registration_io import KubeletRestart, OwnSocketGone
from workers.servicer import Counters, StreamHub
from workers.serving import Serving
from workers.socket_folder_watch import SocketFolderWatch
from workers.timings import WorkerTimings
from workers.watch_events import WatchEvents


def _serve(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def test_a_new_kubelet_sock_at_the_same_inode_is_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    old = _serve(path)
    tracker = KubeletSocket(tmp_path)
    before = os.stat(path).st_ino
    old.close()
    path.unlink()
    new = _serve(path)
    try:
        # Whether or not the inode number came back, the creation event counts.
        assert tracker.created() is KubeletChange.REPLACED
        if os.stat(path).st_ino == before:
            assert tracker.poll() is None  # the stat fallback alone would have missed it
    finally:
        new.close()


def test_a_chmod_or_chown_of_kubelet_sock_is_no_restart(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    s = _serve(path)
    try:
        tracker = KubeletSocket(tmp_path)
        os.chmod(path, 0o600)
        os.chown(path, os.getuid(), os.getgid())
        os.link(path, tmp_path / "kubelet.sock.link")  # a hard link moves the ctime too
        assert tracker.poll() is None
    finally:
        s.close()


def test_removed_and_created_before_we_looked_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    s = _serve(path)
    tracker = KubeletSocket(tmp_path)
    s.close()
    path.unlink()
    s = _serve(path)
    try:
        assert tracker.removed() is None  # a kubelet.sock is there: its creation event follows
        assert tracker.created() is KubeletChange.REPLACED
        assert tracker.poll() is None
    finally:
        s.close()


def test_the_watch_sees_kubelet_sock_and_our_socket(tmp_path: Path) -> None:
    kubelet = _serve(tmp_path / "kubelet.sock")
    ours = _serve(tmp_path / "hca_a.sock")
    watch = SocketFolderWatch(str(tmp_path), str(tmp_path / "hca_a.sock"))
    try:
        assert watch.filenos()
        (tmp_path / "hca_a.sock").unlink()
        seen = watch.read()
        assert seen.own_touched and seen.kubelet == []
        kubelet.close()
        (tmp_path / "kubelet.sock").unlink()
        assert watch.read().kubelet == [KubeletChange.GONE]
        kubelet = _serve(tmp_path / "kubelet.sock")
        assert watch.read().kubelet == [KubeletChange.APPEARED]
    finally:
        watch.close()
        kubelet.close()
        ours.close()


def test_a_kubelet_wipe_tells_the_machine_our_socket_went_before_the_new_kubelet(
    tmp_path: Path,
) -> None:
    """A new kubelet deletes our socket, then creates kubelet.sock. Told of the kubelet first,
    the machine registered with our socket gone, and the kubelet's dial-back then waited ~1 s."""
    kubelet = _serve(tmp_path / "kubelet.sock")
    own = str(tmp_path / "hca_a.sock")
    events, counters = EventQueue(), Counters()
    hub = StreamHub(events, counters)
    serving = Serving(hub, counters, events, WorkerTimings(), lambda _c, _m: None, 1)
    fed: list[object] = []
    signals = WatchEvents(
        SocketFolderWatch(str(tmp_path), own), own, serving, zmq.Poller(), fed.append
    )
    try:
        assert serving.serve(own, "rdma/hca_a", watcher=False) is not None
        os.unlink(own)  # the wipe: every socket, kubelet.sock too, then the new kubelet listens
        kubelet.close()
        (tmp_path / "kubelet.sock").unlink()
        kubelet = _serve(tmp_path / "kubelet.sock")
        signals.read()
        kinds = [type(e) for e in fed]
        assert kinds[0] is OwnSocketGone and KubeletRestart in kinds, kinds
    finally:
        signals.close()
        serving.close()
        events.close()
        kubelet.close()


def test_an_unwatchable_folder_falls_back_to_polling_and_is_watched_once_it_exists(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "dp"
    watch = SocketFolderWatch(str(folder), str(folder / "hca_a.sock"))
    try:
        assert watch.filenos() == []
        folder.mkdir()
        assert watch.ensure() and watch.filenos()
    finally:
        watch.close()


def test_only_the_claimed_stream_is_the_kubelets() -> None:
    events = EventQueue()
    hub = StreamHub(events, Counters())
    try:
        foreign = hub.open(1)  # no claim armed: another local client's
        hub.claim(7)
        kubelets = hub.open(1)
        later = hub.open(1)  # the claim was taken: another client again
        assert events.drain() == [StreamOpened(1, 7)]
        hub.terminated(foreign)
        hub.terminated(later)
        assert events.drain() == []  # their end says nothing about the kubelet
        assert hub.live(1) is kubelets
        hub.terminated(kubelets)
        assert events.drain() == [StreamLost(1, 7)]
        assert hub.live(1) is None
    finally:
        events.close()


def test_the_supervisor_uses_the_same_definition(tmp_path: Path) -> None:
    from supervisor.watch.kubelet import KubeletSocketWatch

    path = tmp_path / "kubelet.sock"
    s = _serve(path)
    try:
        watch = KubeletSocketWatch(tmp_path)
        os.chmod(path, 0o600)
        os.chown(path, os.getuid(), os.getgid())
        assert not watch.poll(), "a chmod or chown of kubelet.sock is no kubelet restart"
    finally:
        s.close()
