"""Config validation: the document, each resource, its names (supervisor and CLI).

Every problem is collected with its JSON path (`_Context`), so one run of `validate-config`
shows them all; warnings are things that work but are probably not what was meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from common.config.keys import _DNS_LABEL, _RESOURCE_NAME, _SELECTOR_FIELDS
from common.config.model import (
    DEFAULT_PERIODIC_UPDATE_INTERVAL,
    DEFAULT_RESOURCE_PREFIX,
    MAX_PERIODIC_UPDATE_INTERVAL,
    MAX_RDMA_HCA_MAX,
    MAX_RESOURCE_NAME_LENGTH,
    MAX_RESOURCE_PREFIX_LENGTH,
    Config,
    ResourceConfig,
    Selectors,
)
from common.config.shapes import (
    _Context,
    _describe,
    _fields,
    _fold,
    _integer,
    _join,
    _list,
    _num,
    _q,
    _string,
)
from common.config.sizing import MAX_RESOURCES, needed_mib
from common.config.values import (
    _EXAMPLES,
    _device_id,
    _driver,
    _if_name,
    _link_type,
    _pci_address,
    _rdma_device,
    _values,
    _vendor,
)

Fields = dict[str, tuple[str, Any]]  # canonical key -> (its JSON path, its value)


def _document(ctx: _Context, obj: object) -> Config | None:
    if not isinstance(obj, dict):
        hint = ""
        if isinstance(obj, list):
            hint = '; if this is the list of resources, wrap it: {"configList": [...]}'
        ctx.error(
            "",
            f'the config must be a JSON object such as {{"configList": [...]}}, not '
            f"{_describe(obj)}{hint}",
        )
        return None
    fields = _fields(ctx, obj, "", "top")
    interval = _interval(ctx, fields)
    resources = _config_list(ctx, fields)
    if ctx.problems:
        return None
    return Config(interval, tuple(resources), tuple(ctx.warnings))


def _interval(ctx: _Context, fields: Fields) -> int:
    if "periodicUpdateInterval" not in fields:
        return DEFAULT_PERIODIC_UPDATE_INTERVAL
    path, value = fields["periodicUpdateInterval"]
    got = _integer(
        ctx, path, value, "a whole number of seconds", f"{DEFAULT_PERIODIC_UPDATE_INTERVAL}"
    )
    if got is None:
        return DEFAULT_PERIODIC_UPDATE_INTERVAL
    if got < 0:
        ctx.error(
            path,
            f"must be >= 0 seconds, got {_num(got)}; use 0 to turn periodic rescans off, "
            f"or leave it out for the default ({DEFAULT_PERIODIC_UPDATE_INTERVAL})",
        )
    elif got > MAX_PERIODIC_UPDATE_INTERVAL:
        ctx.error(
            path,
            f"{_num(got)} seconds is too large (at most {MAX_PERIODIC_UPDATE_INTERVAL}); "
            "use 0 to turn periodic rescans off",
        )
    else:
        return got
    return DEFAULT_PERIODIC_UPDATE_INTERVAL


def _config_list(ctx: _Context, fields: Fields) -> list[ResourceConfig]:
    resources: list[ResourceConfig] = []
    if "configList" not in fields:
        ctx.error(
            "configList",
            'is required: add "configList": [ {"resourceName": ..., "selectors": {...}} ] '
            "with one entry per resource",
        )
        return resources
    path, value = fields["configList"]
    entries = _list(ctx, path, value, "a list of resource objects")
    if entries is not None and not entries:
        ctx.error(path, "must not be empty: add at least one resource")
    if entries is not None and len(entries) > MAX_RESOURCES:
        # Checked first and alone: thousands of entries would bury it under their own problems.
        ctx.error(
            path,
            f"has {len(entries)} resources; at most {MAX_RESOURCES} are accepted: each runs its "
            f"own worker process, {MAX_RESOURCES} already need about "
            f"{needed_mib(MAX_RESOURCES)} MiB and {len(entries)} would need about "
            f'{needed_mib(len(entries))} MiB (docs/configuration.md, "How many resources"); '
            "group devices into fewer resources",
        )
        return resources
    owners: dict[str, int] = {}
    for i, entry in enumerate(entries or ()):
        entry_path = f"{path}[{i}]"
        resource = _resource(ctx, entry_path, entry)
        _check_unique(ctx, owners, entry, path, i)
        if resource is not None:
            resources.append(resource)
    return resources


def _check_unique(ctx: _Context, owners: dict[str, int], entry: object, path: str, i: int) -> None:
    name = _raw_resource_name(entry)
    if name is None:
        return
    if name in owners:
        ctx.error(
            f"{path}[{i}].resourceName",
            f"{_q(name)} is already used by {path}[{owners[name]}]; resource names "
            "must be unique, even with different prefixes, because each resource's "
            "socket file is <resourceName>.sock",
        )
    else:
        owners[name] = i


def _raw_resource_name(entry: object) -> str | None:
    """The resource name as written (for the uniqueness check, even if the entry has errors)."""
    if not isinstance(entry, dict):
        return None
    names = [v for k, v in entry.items() if isinstance(k, str) and _fold(k) == "resourcename"]
    name = names[-1] if names else None
    return name if isinstance(name, str) and name else None


def _resource(ctx: _Context, path: str, value: object) -> ResourceConfig | None:
    if not isinstance(value, dict):
        ctx.error(
            path,
            f'each configList entry must be an object such as {{"resourceName": "rdma_a", '
            f'"selectors": {{"vendors": ["15b3"]}}}}, not {_describe(value)}',
        )
        return None
    before = len(ctx.problems)
    fields = _fields(ctx, value, path, "entry")
    name = _name(ctx, path, fields)
    prefix = _prefix(ctx, fields)
    hca_max = _hca_max(ctx, path, fields)
    selectors = _selection(ctx, path, fields)
    if len(ctx.problems) > before:
        return None
    return ResourceConfig(name, prefix, hca_max, selectors)


def _name(ctx: _Context, path: str, fields: Fields) -> str:
    name_path = _join(path, "resourceName")
    if "resourceName" not in fields:
        ctx.error(name_path, 'is required: add "resourceName": "<name>" (letters, digits, _)')
        return ""
    name_path, raw = fields["resourceName"]
    got = _string(ctx, name_path, raw)
    if got is None:
        return ""
    _check_resource_name(ctx, name_path, got)
    return got


def _prefix(ctx: _Context, fields: Fields) -> str:
    if "resourcePrefix" not in fields:
        return DEFAULT_RESOURCE_PREFIX
    prefix_path, raw = fields["resourcePrefix"]
    got = _string(ctx, prefix_path, raw)
    if not got:  # "" means the default, as in the Go plugin
        return DEFAULT_RESOURCE_PREFIX
    _check_resource_prefix(ctx, prefix_path, got)
    return got


def _hca_max(ctx: _Context, path: str, fields: Fields) -> int:
    if "rdmaHcaMax" not in fields:
        ctx.warn(
            _join(path, "rdmaHcaMax"),
            "not set, so this resource advertises 0 devices (as the Go plugin does); "
            "set it to the number of pods that may share the devices",
        )
        return 0
    max_path, raw = fields["rdmaHcaMax"]
    count = _integer(ctx, max_path, raw, "a whole number of devices", "1000")
    if count is None:
        return 0
    if count < 0:
        ctx.error(max_path, f"must be >= 0, got {_num(count)} (0 advertises no devices)")
    elif count > MAX_RDMA_HCA_MAX:
        ctx.error(
            max_path,
            f"{_num(count)} is too large: at most {MAX_RDMA_HCA_MAX}, so that one "
            "ListAndWatch message stays far below the kubelet's 4 MiB gRPC limit",
        )
    else:
        return count
    return 0


def _selection(ctx: _Context, path: str, fields: Fields) -> Selectors:
    # None: present but unusable (already reported), so "missing" would only add noise.
    selectors = Selectors()
    selectors_given: bool | None = False
    if "selectors" in fields:
        sel_path, raw = fields["selectors"]
        parsed = _selectors(ctx, sel_path, raw)
        selectors_given = None
        if parsed is not None:
            selectors, selectors_given = parsed
    devices: tuple[str, ...] = ()
    devices_given: bool | None = False
    if "devices" in fields:
        dev_path, raw = fields["devices"]
        items = _list(ctx, dev_path, raw, 'a list of interface names, e.g. ["ib0"]')
        devices_given = None
        if items is not None:
            devices_given = bool(items)
            devices = _values(ctx, dev_path, items, _if_name)

    # The Go plugin's rule: a selector with at least one non-empty list, or a non-empty
    # `devices`, but not both. Judged on what was written, so a bad value is not also "missing".
    if selectors_given and devices_given:
        ctx.error(
            path,
            'has both "selectors" and "devices"; use only "selectors" (move the names of '
            '"devices" into "selectors": {"ifNames": [...]})',
        )
    elif selectors_given is False and devices_given is False:
        ctx.error(
            path,
            'selects no devices: add "selectors" with at least one non-empty list, e.g. '
            '"selectors": {"vendors": ["15b3"]} (the Go plugin refused this too)',
        )
    elif devices_given and not selectors_given:
        ctx.warn(
            _join(path, "devices"),
            'is deprecated; write "selectors": {"ifNames": [...]} instead (same meaning)',
        )
        selectors = Selectors(if_names=devices)
    return selectors


def _check_resource_name(ctx: _Context, path: str, name: str) -> None:
    if not _RESOURCE_NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-zA-Z0-9_]", c)})
        what = (
            "is empty"
            if not name
            else f"has characters other than letters, digits and _: {_q(''.join(bad))}"
        )
        ctx.error(path, f"{_q(name)} {what}; use only a-z, A-Z, 0-9 and _ (e.g. hca_shared_a)")
        return
    if len(name) > MAX_RESOURCE_NAME_LENGTH:
        ctx.error(
            path,
            f"is {len(name)} characters; the kubelet accepts at most {MAX_RESOURCE_NAME_LENGTH}",
        )
    if name.startswith("_") or name.endswith("_"):
        ctx.error(
            path,
            f"{_q(name)} must start and end with a letter or digit: the kubelet refuses other "
            f"names at registration (try {_q(name.strip('_') or 'rdma_a')})",
        )


def _check_resource_prefix(ctx: _Context, path: str, prefix: str) -> None:
    reasons: list[str] = []
    if len(prefix) > MAX_RESOURCE_PREFIX_LENGTH:
        reasons.append(f"it is longer than {MAX_RESOURCE_PREFIX_LENGTH} characters")
    if not all(_DNS_LABEL.fullmatch(label) for label in prefix.split(".")):
        reasons.append(
            "it is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'; each "
            "dot-separated part starts and ends with a letter or digit)"
        )
    if prefix.endswith("kubernetes.io"):
        reasons.append("the kubernetes.io domain is reserved for Kubernetes' own resources")
    if prefix.startswith("requests."):
        reasons.append('names starting with "requests." are reserved for quota')
    if not reasons:
        return
    message = f"{_q(prefix)} is refused by the kubelet at registration: {'; '.join(reasons)}"
    fixed = re.sub(r"[^a-z0-9.-]+", "-", prefix.lower())
    fixed = ".".join(part.strip("-") for part in fixed.split(".") if part.strip("-"))
    if fixed and fixed != prefix and _prefix_ok(fixed):
        message += f"; try {_q(fixed)}"
    ctx.error(path, message)


def _prefix_ok(prefix: str) -> bool:
    return (
        len(prefix) <= MAX_RESOURCE_PREFIX_LENGTH
        and all(_DNS_LABEL.fullmatch(label) for label in prefix.split("."))
        and not prefix.endswith("kubernetes.io")
        and not prefix.startswith("requests.")
    )


def _selectors(ctx: _Context, path: str, value: object) -> tuple[Selectors, bool | None] | None:
    """The parsed selectors and whether any list was written non-empty (None: can't tell, a
    list was of the wrong type)."""
    if not isinstance(value, dict):
        ctx.error(
            path,
            f'must be an object such as {{"vendors": ["15b3"], "ifNames": ["ib0"]}}, not '
            f"{_describe(value)}",
        )
        return None
    fields = _fields(ctx, value, path, "selectors")
    parsers: dict[str, Callable[[str], tuple[str | None, str]]] = {
        "vendors": _vendor,
        "deviceIDs": _device_id,
        "drivers": _driver,
        "ifNames": _if_name,
        "linkTypes": _link_type,
        "pciAddresses": _pci_address,
        "rdmaDevices": _rdma_device,
    }
    lists: dict[str, tuple[str, ...]] = {}
    given: bool | None = False
    broken = False
    for attr, key in _SELECTOR_FIELDS:
        if key not in fields:
            continue
        key_path, raw = fields[key]
        items = _list(ctx, key_path, raw, f"a list of strings, e.g. {_EXAMPLES[key]}")
        if items is None:
            broken = True
            continue
        given = given or bool(items)
        lists[attr] = _values(ctx, key_path, items, parsers[key])
    return Selectors(**lists), (given or None) if broken else given
