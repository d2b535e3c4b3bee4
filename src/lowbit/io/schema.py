"""Checks for untrusted JSON read from a file: each returns the value when it has the expected type and range,
and raises ``LowbitError`` naming where in the file it is wrong otherwise.

They exist because a ``.lowbit`` header is data from outside: a wrong type must become one clear line, not an
``AttributeError`` deep inside loading, and no number in it may size an allocation before it is checked.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from lowbit.errors import LowbitError

MAX_DEPTH = 8
MAX_ITEMS = 100_000
MAX_TEXT = 1_000


class SchemaError(LowbitError):
    """A value in a file's header does not have the type or range the format allows."""


def fail(where: str, problem: str) -> SchemaError:
    return SchemaError(f"{where}: {problem}")


def obj(value: Any, where: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object holding every ``required`` key and nothing beyond ``required`` and ``optional``."""
    if not isinstance(value, dict):
        raise fail(where, f"expected an object, found {type(value).__name__}")
    required, allowed = set(required), set(required) | set(optional)
    missing, unknown = required - value.keys(), value.keys() - allowed
    if missing:
        raise fail(where, f"missing {', '.join(sorted(missing))}")
    if unknown:
        raise fail(where, f"unknown key {sorted(map(str, unknown))[0]!r}")
    return value


def mapping(value: Any, where: str, max_len: int = MAX_ITEMS) -> dict[str, Any]:
    """A JSON object of at most ``max_len`` entries, with any keys."""
    if not isinstance(value, dict):
        raise fail(where, f"expected an object, found {type(value).__name__}")
    if len(value) > max_len:
        raise fail(where, f"more than {max_len} entries")
    return value


def integer(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(where, f"expected an integer, found {type(value).__name__}")
    if not low <= value <= high:
        raise fail(where, f"{value} is outside {low}..{high}")
    return value


def number(value: Any, where: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise fail(where, f"expected a number, found {type(value).__name__}")
    if not (math.isfinite(value) and low <= value <= high):
        raise fail(where, f"{value} is outside {low}..{high}")
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, f"expected true or false, found {type(value).__name__}")
    return value


def text(value: Any, where: str, choices: Iterable[str] | None = None, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise fail(where, f"expected a string, found {type(value).__name__}")
    if len(value) > max_len:
        raise fail(where, f"string longer than {max_len} characters")
    if choices is not None and value not in set(choices):
        raise fail(where, f"{value!r} is not one of {', '.join(sorted(choices))}")
    return value


def array(value: Any, where: str, max_len: int = MAX_ITEMS) -> list[Any]:
    if not isinstance(value, list):
        raise fail(where, f"expected a list, found {type(value).__name__}")
    if len(value) > max_len:
        raise fail(where, f"more than {max_len} entries")
    return value


def optional(value: Any, check, *args: Any, **kwargs: Any) -> Any:
    """``None``, or a value that passes ``check``."""
    return None if value is None else check(value, *args, **kwargs)


def plain_json(value: Any, where: str, depth: int = 0) -> Any:
    """Any JSON value of bounded depth and size (for records that are shown but never drive loading)."""
    if depth > MAX_DEPTH:
        raise fail(where, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise fail(where, f"more than {MAX_ITEMS} entries")
        return {text(k, where, max_len=200): plain_json(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(array(value, where))]
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(where, "not a finite number")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return text(value, where, max_len=10 * MAX_TEXT)
