"""The strict JSON reader of the config file: JSON as Go's encoding/json reads it, or a refusal.

Keys given twice, NaN/Infinity and integer literals too long for any field are kept as markers
(`_JsonObject.duplicates`, `_NonStandard`, `_HugeInt`) so validation can name them; a syntax
error is refused with its line, column and a hint.
"""

from __future__ import annotations

import json
import re
from typing import Any

from common.config.model import MAX_CONFIG_BYTES, ConfigError, ConfigProblem


class _HugeInt:
    """An integer literal too long to be a number any field takes (Python would refuse it)."""

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits


class _NonStandard:
    """NaN / Infinity: Python's json reads them, JSON (and Go) do not."""

    __slots__ = ("word",)

    def __init__(self, word: str) -> None:
        self.word = word


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers keys given twice (Go silently keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    dups: list[str] = []
    for key, value in pairs:
        if key in obj:
            dups.append(key)
        obj[key] = value
    if dups:
        obj.duplicates = tuple(dups)
    return obj


def _parse_int(text: str) -> int | _HugeInt:
    # Python refuses int() of more than 4300 digits; nothing here needs more than 20.
    return _HugeInt(text) if len(text.lstrip("-")) > 30 else int(text)


def _decode(data: bytes, source: str) -> object:
    def fail(message: str) -> ConfigError:
        return ConfigError([ConfigProblem("", message)], source)

    if len(data) > MAX_CONFIG_BYTES:
        raise fail(
            f"the file is larger than {MAX_CONFIG_BYTES} bytes (a ConfigMap's limit); "
            "this is not a config file"
        )
    if not data.strip():
        raise fail(
            'the file is empty; it must hold a JSON object such as {"configList": '
            '[{"resourceName": "hca_shared_devices_a", "rdmaHcaMax": 1000, '
            '"selectors": {"vendors": ["15b3"]}}]}'
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise fail("the file is UTF-16 encoded; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        raise fail("the file starts with a UTF-8 byte-order mark, which JSON forbids; remove it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _line_col(data[: e.start].decode("utf-8", "replace"))
        raise fail(
            f"the file is not UTF-8: byte 0x{data[e.start]:02x} at line {line}, column {col} "
            f"(offset {e.start}); save the file as UTF-8"
        ) from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_int=_parse_int,
            parse_constant=_NonStandard,
        )
    except json.JSONDecodeError as e:
        raise fail(
            f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}{_json_hint(text, e.pos)}"
        ) from None
    except RecursionError:
        raise fail("the JSON is nested too deeply to be a config") from None
    except ValueError as e:  # defensive: any other refusal of the decoder
        raise fail(f"not valid JSON: {e}") from None


def _line_col(prefix: str) -> tuple[int, int]:
    line = prefix.count("\n") + 1
    return line, len(prefix) - (prefix.rfind("\n") + 1) + 1


#: A Kubernetes manifest rather than the JSON inside it.
_CONFIGMAP_YAML = re.compile(r"^\s*kind:\s*['\"]?ConfigMap\b|^\s*apiVersion:\s*\S", re.MULTILINE)


def _json_hint(text: str, pos: int) -> str:
    """A guess at the usual mistakes, so the operator need not know JSON's grammar by heart."""
    before = text[:pos].rstrip()
    here = text[pos : pos + 1]
    stripped = text.lstrip()
    if _CONFIGMAP_YAML.search(text) and not stripped.startswith(("{", "[")):
        return (
            ' (this is a whole ConfigMap in YAML; the config is its data["config.json"] value: '
            "kubectl -n kube-system get configmap rdma-devices -o jsonpath='{.data.config\\.json}')"
        )
    if re.match(r"[A-Za-z_]+\s*:", stripped) and not stripped.startswith(("{", "[")):
        return " (this looks like YAML; the config must be JSON)"
    if before.endswith(",") and here in ("}", "]"):
        return " (remove the comma before the closing bracket: JSON allows no trailing comma)"
    if here == "'":
        return " (JSON strings and keys need double quotes)"
    if text[pos : pos + 2] in ("//", "/*") or here == "#":
        return " (JSON has no comments; remove them)"
    if pos >= len(text.rstrip()):
        return " (the file ends early: is a closing } or ] missing?)"
    return ""
