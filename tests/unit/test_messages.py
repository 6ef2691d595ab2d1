"""The supervisor-worker control protocol: round trips, and refusal of anything malformed."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.messages import (
    ALLOCATE_BUCKETS,
    Configure,
    Devices,
    Error,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Ready,
    Stop,
    WorkerCounters,
    WorkerSettings,
    decode,
    encode,
)
from tests.standin_supervisor import make_candidate, make_resource

SETTINGS = WorkerSettings("/var/lib/kubelet/device-plugins", "/reg", "auto", True, "/cdi", 1.0)

ALL_MESSAGES: list[Message] = [
    Hello("hca_a", 1234),
    Configure(make_resource(), SETTINGS, (make_candidate(0), make_candidate(1, numa_node=-1))),
    Devices(()),
    Devices((make_candidate(2, port_state="DOWN", present=False),)),
    Stop(),
    Ready(True, "classic", 1700000000.5, "registered"),
    Heartbeat(),
    Heartbeat(WorkerCounters(allocations_ok=3, allocate_buckets=(1,) * len(ALLOCATE_BUCKETS))),
    Error("protocol", "bad frame", parent="abc"),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


def test_envelope_shape() -> None:
    msg = Hello("hca_a", 7, parent="p1")
    raw = json.loads(encode(msg))
    assert raw == {
        "v": 1,
        "id": msg.id,
        "type": "hello",
        "parent": "p1",
        "body": {"resource": "hca_a", "pid": 7},
    }
    assert Hello("x", 1).id != Hello("x", 1).id


def _frame(**overrides: Any) -> bytes:
    raw: dict[str, Any] = {"v": 1, "id": "i", "type": "hello", "parent": None}
    raw["body"] = {"resource": "a", "pid": 1}
    raw.update(overrides)
    return json.dumps(raw).encode()


def test_unknown_body_keys_are_ignored() -> None:
    msg = decode(_frame(body={"resource": "a", "pid": 1, "future": True}))
    assert msg == Hello("a", 1, id="i")


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b"\xff\xfe", "not a JSON document"),
        (b"[1, 2]", "must be a JSON object"),
        (_frame(v=2), "unsupported protocol version 2"),
        (_frame(v=True), "unsupported protocol version"),
        (_frame(v=None), "unsupported protocol version"),
        (_frame(type="launch"), "unknown message type 'launch'"),
        # A type the protocol no longer has is refused like any unknown one.
        (_frame(type="reregister", body={"reason": "x"}), "unknown message type 'reregister'"),
        (_frame(type=None), "unknown message type"),
        (_frame(id=""), "'id'"),
        (_frame(parent=3), "'parent'"),
        (_frame(body=[]), "'body' must be a JSON object"),
        (_frame(body={"resource": "a"}), "hello.pid: missing"),
        (_frame(body={"resource": "a", "pid": "1"}), "hello.pid: must be an integer"),
        (_frame(body={"resource": "a", "pid": True}), "hello.pid: must be an integer"),
        (_frame(body={"resource": 5, "pid": 1}), "hello.resource: must be a string"),
        (
            b'{"v": 1, "id": "i", "type": "ready", "parent": null, "body": '
            b'{"registered": true, "mode": "classic", "since": NaN}}',
            "NaN",
        ),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(frame: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says.replace("(", r"\(").replace(")", r"\)")):
        decode(frame)


def _configure_raw(**settings_overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(
        encode(Configure(make_resource(), SETTINGS, (make_candidate(0),)))
    )
    raw["body"]["settings"].update(settings_overrides)
    return raw


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("settings", "registration_mode"), "magic", "registration_mode"),
        (("settings", "heartbeat_interval"), 0, "heartbeat_interval"),
        (("settings", "use_cdi"), "yes", "settings.use_cdi: must be true or false"),
        (("resource", "rdma_hca_max"), -1, "rdma_hca_max"),
        (("resource", "selectors"), {"vendors": "15b3"}, "selectors.vendors: must be a list"),
        (("devices",), [{"name": "x"}], r"devices\[0\].pci_address: missing"),
        (("devices",), [None], r"devices\[0\]: must be a JSON object"),
    ],
)
def test_configure_fields_are_checked(path: tuple[str, ...], value: Any, says: str) -> None:
    raw = _configure_raw()
    target = raw["body"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProtocolError, match=says):
        decode(json.dumps(raw).encode())


def test_nested_candidate_fields_are_type_checked() -> None:
    raw = _configure_raw()
    raw["body"]["devices"][0]["rdma_devices"][0]["char_devices"][0]["major"] = "231"
    with pytest.raises(ProtocolError, match="major"):
        decode(json.dumps(raw).encode())
    raw["body"]["devices"][0]["rdma_devices"][0]["char_devices"][0]["major"] = None
    msg = decode(json.dumps(raw).encode())
    assert isinstance(msg, Configure)
    assert msg.devices[0].rdma_devices[0].char_devices[0].major is None


def test_encode_refuses_nan() -> None:
    with pytest.raises(ProtocolError):
        encode(Ready(True, "classic", float("nan")))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["hello", "configure", "devices", "ready", "heartbeat", "error", "x"]),
    body=json_values,
)
def test_decode_raises_only_protocol_error_on_json(kind: str, body: Any) -> None:
    frame = json.dumps({"v": 1, "id": "i", "type": kind, "parent": None, "body": body}).encode()
    with contextlib.suppress(ProtocolError):
        decode(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_raises_only_protocol_error_on_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


CONFIGURE_RAW = json.loads(encode(ALL_MESSAGES[1]))
CONFIGURE_PATHS = _paths(CONFIGURE_RAW)[1:]


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(CONFIGURE_PATHS), value=json_values)
def test_decode_raises_only_protocol_error_on_mutated_configure(
    path: tuple[Any, ...], value: Any
) -> None:
    raw = json.loads(json.dumps(CONFIGURE_RAW))
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with contextlib.suppress(ProtocolError):
        decode(json.dumps(raw).encode())
