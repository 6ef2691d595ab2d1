"""JSON shape helpers of config validation: the problem collector, fields, paths, wording.

Case-insensitive field lookup as Go does it, and the words every message uses to quote and
describe a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from common.config.json_reader import _HugeInt, _NonStandard
from common.config.keys import _IDENTIFIER, _KEYS_BY_LEVEL, _WHERE
from common.config.model import ConfigProblem


class _Context:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ConfigProblem(path, message))


def _fold(key: str) -> str:
    """Go's encoding/json key folding: ASCII case, plus the two non-ASCII letters that fold
    onto ASCII ones (KELVIN SIGN -> k, LONG S -> s)."""
    return "".join(
        c.lower() if c.isascii() else {"\u212a": "k", "\u017f": "s"}.get(c, c) for c in key
    )


def _fields(
    ctx: _Context, obj: Mapping[Any, Any], path: str, level: str
) -> dict[str, tuple[str, Any]]:
    """Map each known key (canonical spelling) to (its path, its value), matching keys as Go does.

    Unknown keys, and a key given twice (exactly or differing in case), are errors.
    """
    known = _KEYS_BY_LEVEL[level]
    by_fold = {_fold(k): k for k in known}
    found: dict[str, tuple[str, Any]] = {}
    spelled: dict[str, str] = {}
    for key in getattr(obj, "duplicates", ()):
        ctx.error(
            _join(path, key),
            "is given twice in the same object; keep one (the Go plugin silently used the last)",
        )
    for key, value in obj.items():
        if not isinstance(key, str):
            ctx.error(path, f"has a key that is not a string: {_q(repr(key))}")
            continue
        canonical = by_fold.get(_fold(key))
        if canonical is None:
            ctx.error(_join(path, key), _unknown_key(key, level))
            continue
        if canonical in found:
            ctx.error(
                _join(path, key),
                f"is given twice ({_q(spelled[canonical])} and {_q(key)}: keys match without "
                "regard to case); keep one",
            )
        found[canonical] = (_join(path, canonical), value)
        spelled[canonical] = key
    return found


def _unknown_key(key: str, level: str) -> str:
    folded = _fold(key)
    for other, keys in _KEYS_BY_LEVEL.items():
        for k in keys:
            if other != level and _fold(k) == folded:
                return f"unknown key {_q(key)} here; {_q(k)} belongs {_WHERE[other]}"
    known = _KEYS_BY_LEVEL[level]
    folded_known = {_fold(k): k for k in known}
    import difflib  # only for a suggestion in an error: workers never pay for it

    close = difflib.get_close_matches(folded, list(folded_known), n=1, cutoff=0.6)
    if close:
        return f"unknown key {_q(key)}; did you mean {_q(folded_known[close[0]])}?"
    return f"unknown key {_q(key)}; valid keys {_WHERE[level]}: {', '.join(known)}"


def _join(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_q(key)}]"


def _q(text: str, limit: int = 80) -> str:
    """Quote a value from the file for a message: JSON syntax, ASCII only, never huge."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text)


def _num(n: int) -> str:
    # str() of an int with more than 4300 digits raises; such numbers need no digits shown.
    if abs(n) < 10**30:
        return str(n)
    return f"{'-' if n < 0 else ''}(a number of about {int(n.bit_length() * 0.30103) + 1} digits)"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the number {_num(value)}"
    if isinstance(value, _HugeInt):
        return f"a {len(value.digits)}-digit number"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, _NonStandard):
        return f"{value.word} (not valid JSON)"
    if isinstance(value, str):
        return f"the string {_q(value, 40)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__} (not a JSON value)"


def _null_hint(value: object) -> str:
    return "; remove the key to use the default" if value is None else ""


def _integer(ctx: _Context, path: str, value: object, what: str, example: str) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    message = f"must be {what} (e.g. {example}), not {_describe(value)}"
    if isinstance(value, _HugeInt):
        message = f"{_describe(value)} is far out of range"
    elif isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        if value.is_integer():
            message += f"; write {int(value)} without a decimal point or exponent"
        else:
            message += "; fractions are not allowed"
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        message += f"; remove the quotes: {value.strip()}"
    ctx.error(path, message + _null_hint(value))
    return None


def _string(ctx: _Context, path: str, value: object) -> str | None:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**30:
            hint = f"; put it in double quotes: {json.dumps(str(value))}"
        ctx.error(path, f"must be a string, not {_describe(value)}{hint}")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        ctx.error(path, "contains a \\u escape of half a surrogate pair, which is not a character")
        return None
    return value


def _list(ctx: _Context, path: str, value: object, what: str) -> list[Any] | None:
    if isinstance(value, list):
        return value
    hint = ""
    if value is None:
        hint = "; write [] for an empty list, or remove the key"
    elif isinstance(value, str):
        hint = f"; wrap it in brackets: [{_q(value)}]"
    ctx.error(path, f"must be {what}, not {_describe(value)}{hint}")
    return None
