"""IDs held above a shrunk rdmaHcaMax: the pure rule (supervisor/held_ids.py), the worker's plan,
the message field, and the real supervisor with the kubelet and PodResources simulators."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from common.config import ResourceConfig, Selectors
from common.devices import Candidate
from common.messages import Configure, ProtocolError, WorkerSettings, decode, encode
from supervisor.held_ids import HeldIds, retained
from supervisor.pod_resources import PodAllocation
from tests.conditions import hard_timeout
from tests.e2e.test_metrics_e2e import MetricsPlant, until
from tests.podresources_simulator import PodDevices
from tests.supervisor_rig import full, resource_entry
from workers.plan import make_plan

RES = "example.com/hca"


def row(pod: str, *ids: str, resource: str = RES) -> PodAllocation:
    return PodAllocation("ns", pod, "main", resource, len(set(ids)), tuple(sorted(set(ids))))


def resource(hca_max: int) -> ResourceConfig:
    return ResourceConfig("hca", "example.com", hca_max, Selectors())


def test_retained_is_what_pods_hold_above_the_maximum() -> None:
    rows = [row("a", "1", "5"), row("b", "9", "10"), row("c", "2"), row("x", "7", resource="o/r")]
    kept = retained(RES, 4, rows)
    assert kept.ids == ("5", "9", "10")  # numeric order
    assert kept.pods == ("ns/a", "ns/b")
    assert retained(RES, 11, rows).ids == ()
    assert retained(RES, 4, None).ids == ()
    # Only decimal IDs are ours.
    assert retained(RES, 0, [row("d", "abc")]).ids == ()


def test_held_ids_tracks_shrink_and_release(caplog: pytest.LogCaptureFixture) -> None:
    held = HeldIds()
    small = resource(4)
    assert held.serving(small) == small  # nothing known: nothing retained
    changed = held.update([small], [row("a", "1", "6")])
    assert changed == [small]
    caplog.set_level(logging.INFO)
    serving = held.serving(small)
    assert serving.retained_ids == ("6",)
    assert "ns/a" in caplog.text and "ids=6" in caplog.text
    assert held.update([small], [row("a", "1", "6")]) == []  # same snapshot: nothing to send
    assert held.update([small], None) == []  # kubelet away: keep serving what we serve
    assert held.serving(small).retained_ids == ("6",)
    assert held.update([small], []) == [small]  # released
    assert held.serving(small) == small
    assert "any more" in caplog.text


def test_plan_advertises_retained_ids_after_the_range() -> None:
    candidate = Candidate("0000:3b:00.0", "0000:3b:00.0", "15b3", "1017", "mlx5_core", 0)
    plan = make_plan(
        ResourceConfig("hca", "example.com", 2, Selectors(), ("1", "5")), [candidate], False
    )
    assert plan.device_ids == ("0", "1", "5")
    assert make_plan(resource(2), [], False).device_ids == ()  # no device: no IDs at all


def test_configure_carries_retained_ids_and_refuses_bad_ones() -> None:
    settings = WorkerSettings("/dp", "/reg", "classic", False, "/cdi", 1.0)
    msg = Configure(ResourceConfig("hca", "example.com", 2, Selectors(), ("7",)), settings, ())
    back = decode(encode(msg))
    assert isinstance(back, Configure) and back.resource.retained_ids == ("7",)
    bad = encode(msg).replace(b'"7"', b'"x"')
    with pytest.raises(ProtocolError):
        decode(bad)


# -- the real supervisor, the kubelet simulator and a PodResources simulator ----------------------


@pytest.fixture
def plant() -> Iterator[MetricsPlant]:
    config: dict[str, Any] = {
        "periodicUpdateInterval": 0,
        "configList": [resource_entry("a", ["mlx5_0"], count=8)],
    }

    class Fast(MetricsPlant):
        def command(self) -> list[str]:
            return [*super().command(), "--pod-resources-interval", "0.1"]

    with hard_timeout(60):
        rig = Fast(config)
        try:
            rig.start()
            until(rig.answers, timeout=10, what="metrics endpoint")
            rig.wait_registered(["a"])
            yield rig
        except BaseException:
            print(rig.log()[-6000:])
            raise
        finally:
            rig.close()


def ids(rig: MetricsPlant) -> list[str]:
    return [d.id for d in rig.kubelet.devices(full("a")) or []]


def test_shrink_keeps_held_ids_until_the_pod_goes(plant: MetricsPlant) -> None:
    rig = plant
    rig.pods.set_pods([PodDevices("team", "trainer", {"main": {full("a"): ["2", "6", "6"]}})])
    until(
        lambda: (
            rig.value(
                "pod_allocations",
                namespace="team",
                pod="trainer",
                container="main",
                resource=full("a"),
            )
            == 2
        ),
        what="pod seen",
    )
    rig.write_config(
        {"periodicUpdateInterval": 0, "configList": [resource_entry("a", ["mlx5_0"], count=4)]}
    )
    until(lambda: ids(rig) == ["0", "1", "2", "3", "6"], what="held ID 6 still advertised")
    assert rig.value("retained_device_ids", resource=full("a")) == 1
    assert "team/trainer" in rig.log() and "ids=6" in rig.log()
    assert rig.registrations("a") == 1  # a changed config, no re-registration
    rig.pods.set_pods([])
    until(lambda: ids(rig) == ["0", "1", "2", "3"], what="ID 6 dropped once released")
    until(lambda: rig.value("retained_device_ids", resource=full("a")) == 0, what="metric 0")


class NoMetrics(MetricsPlant):
    """The same supervisor and PodResources simulator, with `--metrics-address ""`."""

    def command(self) -> list[str]:
        args = super().command()
        at = args.index("--metrics-address")
        args[at + 1] = ""
        return [*args, "--pod-resources-interval", "0.1"]


def test_held_ids_do_not_need_the_metrics_endpoint() -> None:
    # Held IDs are a correctness feature: they must not ride on the metrics observer.
    config: dict[str, Any] = {
        "periodicUpdateInterval": 0,
        "configList": [resource_entry("a", ["mlx5_0"], count=8)],
    }
    with hard_timeout(60):
        rig = NoMetrics(config)
        try:
            rig.start()
            rig.wait_registered(["a"])
            rig.pods.set_pods([PodDevices("team", "trainer", {"main": {full("a"): ["6"]}})])
            rig.write_config(
                {
                    "periodicUpdateInterval": 0,
                    "configList": [resource_entry("a", ["mlx5_0"], count=4)],
                }
            )
            until(lambda: ids(rig) == ["0", "1", "2", "3", "6"], what="held ID 6 advertised")
            rig.pods.set_pods([])
            until(lambda: ids(rig) == ["0", "1", "2", "3"], what="ID 6 dropped once released")
        except BaseException:
            print(rig.log()[-6000:])
            raise
        finally:
            rig.close()
