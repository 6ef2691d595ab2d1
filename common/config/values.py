"""Config validation of selector values: PCI ids, drivers, interface names, link types, ...

Each parser takes one written value and returns (normalised value or None, problem text), so a
message names the value and what to write instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from common.config.keys import _HEX4, _PCI_ADDRESS, _UNKNOWN_LINK_TYPE
from common.config.model import (
    _LINK_TYPE_ALIASES,
    _VENDOR_NAMES,
    LINK_TYPES,
    MAX_IF_NAME_BYTES,
    MAX_RDMA_DEVICE_NAME_LENGTH,
)
from common.config.shapes import _Context, _q, _string

_EXAMPLES = {
    "vendors": '["15b3"]',
    "deviceIDs": '["1017"]',
    "drivers": '["mlx5_core"]',
    "ifNames": '["ib0"]',
    "linkTypes": '["infiniband"]',
    "pciAddresses": '["0000:3b:00.0"]',
    "rdmaDevices": '["mlx5_0"]',
}


def _values(
    ctx: _Context,
    path: str,
    items: list[Any],
    parse: Callable[[str], tuple[str | None, str]],
) -> tuple[str, ...]:
    """Check and normalise each string of a selector list; duplicates are dropped with a warning."""
    out: list[str] = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        text = _string(ctx, item_path, item)
        if text is None:
            continue
        if text == "":
            ctx.error(item_path, "is an empty string; remove it or write a value")
            continue
        if any(c.isspace() for c in text):
            ctx.error(
                item_path, f"{_q(text)} contains white space, which no such name has; remove it"
            )
            continue
        normalised, why = parse(text)
        if normalised is None:
            ctx.error(item_path, why)
        elif normalised in out:
            ctx.warn(item_path, f"{_q(text)} repeats an earlier value; ignored")
        else:
            out.append(normalised)
    return tuple(out)


def _pci_id(text: str, what: str) -> tuple[str | None, str]:
    lowered = text.lower()
    digits = lowered[2:] if lowered.startswith("0x") else lowered
    if _HEX4.fullmatch(digits):
        return digits, ""
    hint = f"a PCI {what} is 4 hex digits, e.g. {'15b3' if what == 'vendor ID' else '1017'}"
    if ":" in text and all(_HEX4.fullmatch(p.lower().removeprefix("0x")) for p in text.split(":")):
        vendor, _, device = lowered.partition(":")
        hint = (
            f"this looks like vendor:device; put {_q(vendor)} in vendors and {_q(device)} in "
            "deviceIDs"
        )
    elif what == "vendor ID" and lowered in _VENDOR_NAMES:
        hint = f"write the vendor's PCI ID: {_q(_VENDOR_NAMES[lowered])}"
    elif re.fullmatch(r"[0-9a-f]{1,3}", digits):
        hint += f" (pad with zeros: {_q(digits.zfill(4))})"
    return None, f"{_q(text)} is not a PCI {what}: {hint} (0x and upper case are accepted)"


def _vendor(text: str) -> tuple[str | None, str]:
    return _pci_id(text, "vendor ID")


def _device_id(text: str) -> tuple[str | None, str]:
    return _pci_id(text, "device ID")


def _driver(text: str) -> tuple[str | None, str]:
    if "/" in text or "\0" in text:
        return None, f"{_q(text)} is not a driver name (it contains '/'); write e.g. mlx5_core"
    return text, ""


def _if_name(text: str) -> tuple[str | None, str]:
    if _PCI_ADDRESS.fullmatch(text.lower()):
        return None, (
            f"{_q(text)} is a PCI address, not an interface name; select it with "
            f'"selectors": {{"pciAddresses": [{_q(text)}]}} instead'
        )
    if "/" in text or ":" in text or "\0" in text or text in (".", ".."):
        return None, f"{_q(text)} is not a Linux interface name (no '/', ':' or . / ..)"
    if len(text.encode("utf-8")) > MAX_IF_NAME_BYTES:
        return None, (
            f"{_q(text)} is longer than {MAX_IF_NAME_BYTES} bytes, so no Linux interface has "
            "this name"
        )
    return text, ""


def _link_type(text: str) -> tuple[str | None, str]:
    lowered = text.lower()
    if lowered in LINK_TYPES or _UNKNOWN_LINK_TYPE.fullmatch(lowered):
        return lowered, ""
    suggestion = _LINK_TYPE_ALIASES.get(lowered)
    if suggestion is None:
        import difflib  # only for a suggestion in an error: workers never pay for it

        close = difflib.get_close_matches(lowered, sorted(LINK_TYPES), n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    if suggestion is not None:
        return None, (
            f"{_q(text)} is not a kernel link type; did you mean {_q(suggestion)}? "
            '(Ethernet and RoCE ports are "ether", InfiniBand ports are "infiniband")'
        )
    return None, (
        f'{_q(text)} is not a kernel link type: use "ether" (Ethernet, RoCE) or "infiniband", '
        "or another name from /sys/class/net/<if>/type as ip link shows it"
    )


def _pci_address(text: str) -> tuple[str | None, str]:
    match = _PCI_ADDRESS.fullmatch(text.lower())
    if match is None:
        return None, (
            f"{_q(text)} is not a PCI address: write domain:bus:device.function, e.g. "
            '"0000:3b:00.0" (as lspci -D shows it; the domain may be left out)'
        )
    device = int(match["dev"], 16)
    if device > 0x1F:
        return None, f"{_q(text)} is not a PCI address: the device number is at most 1f"
    domain = int(match["domain"] or "0", 16)
    return f"{domain:04x}:{int(match['bus'], 16):02x}:{device:02x}.{match['fn']}", ""


def _rdma_device(text: str) -> tuple[str | None, str]:
    if "/" in text or "\0" in text:
        return None, f"{_q(text)} is not an RDMA device name (it contains '/'); write e.g. mlx5_0"
    if len(text) > MAX_RDMA_DEVICE_NAME_LENGTH:
        return None, (
            f"{_q(text)} is longer than {MAX_RDMA_DEVICE_NAME_LENGTH} characters, so no RDMA "
            "device has this name"
        )
    return text, ""
