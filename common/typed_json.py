"""Typed JSON for frozen dataclasses: dump one, or build one back checking every field's type.

The control protocol's codec (`common.messages` encode/decode) uses it in both the supervisor and
the workers. The rules: keys a dataclass does not know are ignored; a missing field without a
default, or a value of the wrong JSON type, raises `ShapeError` naming the field's path; `bool` is
never an integer here.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any


class ShapeError(ValueError):
    """A JSON value that does not have the shape of the type asked for."""


def to_json(value: Any) -> Any:
    """`value` (a dataclass, a tuple/list of them, or a scalar) as JSON-ready data."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    return value


#: Each dataclass's resolved field types. `typing.get_type_hints` compiles and evaluates every
#: string annotation on each call: once per class is enough, and `warm` fills it in a process
#: that forks (the zygote), so its children share it instead of compiling in each.
_HINTS: dict[type[Any], dict[str, Any]] = {}


def type_hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def warm(classes: typing.Iterable[type[Any]]) -> None:
    """Resolve the field types of `classes` and of every dataclass their fields name."""
    todo = list(classes)
    while todo:
        cls = todo.pop()
        if cls in _HINTS or not is_dataclass(cls):
            continue
        for hint in type_hints(cls).values():
            todo.extend(_dataclasses_in(hint))


def _dataclasses_in(hint: Any) -> list[type[Any]]:
    if isinstance(hint, type) and is_dataclass(hint):
        return [hint]
    return [c for arg in typing.get_args(hint) for c in _dataclasses_in(arg)]


def fields_from_json(
    cls: type[Any], data: dict[str, Any], where: str, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Keyword arguments for dataclass `cls` from JSON `data`, each checked against its type."""
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        path = f"{where}.{f.name}"
        if f.name not in data:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise ShapeError(f"{path}: missing")
        values[f.name] = _value_from_json(hints[f.name], data[f.name], path)
    return values


def _value_from_json(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return _union_from_json(typing.get_args(hint), value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ShapeError(f"{path}: must be a list")
        item = typing.get_args(hint)[0]
        return tuple(_value_from_json(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint in _SCALARS:
        return _scalar_from_json(hint, value, path)
    if isinstance(hint, type) and is_dataclass(hint):
        if not isinstance(value, dict):
            raise ShapeError(f"{path}: must be a JSON object")
        return hint(**fields_from_json(hint, value, path))
    raise ShapeError(f"{path}: no JSON mapping for {hint!r}")  # pragma: no cover


def _union_from_json(options: tuple[Any, ...], value: Any, path: str) -> Any:
    if value is None and type(None) in options:
        return None
    problems = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _value_from_json(option, value, path)
        except ShapeError as exc:
            problems.append(str(exc))
    raise ShapeError("; ".join(problems) or f"{path}: must not be null")


#: JSON scalar types: what a value must be (bool is not an int here), and the words for it.
_SCALARS: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _scalar_from_json(hint: type, value: Any, path: str) -> object:
    accepted, words = _SCALARS[hint]
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise ShapeError(f"{path}: must be {words}")
    return float(typing.cast(float, value)) if hint is float else value
