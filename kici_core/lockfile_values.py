"""Typed readers for untrusted lock-file JSON, and deep freezing of pass-through values.

Every reader takes the JSON path of the value it checks and raises only
:class:`kici_core.errors.LockfileError` naming that path. ``null`` in an optional field is treated as
absent (as the upstream TypeScript reader does with ``??``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from kici_core.errors import LockfileError
from kici_core.jsontypes import JSONObject, JSONValue

MISSING: Final = object()
"""Sentinel returned by :func:`field` for an absent (or ``null``) optional field."""

MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects a lock file may have (a compiled lock file needs about ten levels).
Checked without recursion before anything else walks the document, so a hostile file cannot exhaust the
interpreter's stack."""


def join(path: str, key: str | int) -> str:
    """Extend a JSON path: ``join("workflows", 2) == "workflows[2]"``, ``join("a", "b") == "a.b"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def kind_of(value: object) -> str:
    """Name the JSON type of ``value`` for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _wrong(path: str, expected: str, value: object) -> LockfileError:
    return LockfileError(path, f"expected {expected}, got {kind_of(value)}")


def check_depth(doc: object, path: str = "", *, limit: int = MAX_DEPTH) -> None:
    """Check, iteratively, that ``doc`` nests arrays and objects at most ``limit`` levels deep.

    Raises:
        LockfileError: naming the first value found beyond the limit.
    """
    stack: list[tuple[object, str, int]] = [(doc, path, 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, Mapping):
            items: Sequence[tuple[str | int, object]] = list(value.items())
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        else:
            continue
        if depth > limit:
            raise LockfileError(where, f"nested more than {limit} levels deep")
        for key, child in items:
            if isinstance(child, Mapping | list | tuple):
                stack.append((child, join(where, key) if isinstance(key, int) else join(where, str(key)), depth + 1))


def field(obj: Mapping[str, object], key: str, path: str, *, required: bool = False) -> object:
    """Return ``obj[key]``; :data:`MISSING` when absent or null, unless ``required`` (then raise)."""
    value = obj.get(key)
    if value is None:
        if required:
            raise LockfileError(join(path, key), "missing required field")
        return MISSING
    return value


def as_object(value: object, path: str) -> Mapping[str, object]:
    """Check that ``value`` is a JSON object with string keys."""
    if not isinstance(value, Mapping):
        raise _wrong(path, "an object", value)
    for key in value:
        if not isinstance(key, str):
            raise LockfileError(path, f"object key {key!r} is not a string")
    return value


def as_array(value: object, path: str) -> Sequence[object]:
    """Check that ``value`` is a JSON array."""
    if not isinstance(value, list | tuple):
        raise _wrong(path, "an array", value)
    return value


def as_str(value: object, path: str, *, non_empty: bool = False) -> str:
    """Check that ``value`` is a string (non-empty when asked)."""
    if not isinstance(value, str):
        raise _wrong(path, "a string", value)
    if non_empty and not value:
        raise LockfileError(path, "must not be empty")
    return value


def as_bool(value: object, path: str) -> bool:
    """Check that ``value`` is a boolean."""
    if not isinstance(value, bool):
        raise _wrong(path, "a boolean", value)
    return value


def as_number(value: object, path: str) -> float:
    """Check that ``value`` is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _wrong(path, "a number", value)
    return float(value)


def as_int(value: object, path: str, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an integer (``3.0`` counts, as in JavaScript), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(path, "an integer", value)
    if isinstance(value, float):
        if not value.is_integer():
            raise _wrong(path, "an integer", value)
        value = int(value)
    if minimum is not None and value < minimum:
        raise LockfileError(path, f"must be at least {minimum}, got {value}")
    return value


def as_str_list(value: object, path: str) -> tuple[str, ...]:
    """Check that ``value`` is an array of strings."""
    return tuple(as_str(item, join(path, i)) for i, item in enumerate(as_array(value, path)))


def as_str_map(value: object, path: str) -> Mapping[str, str]:
    """Check that ``value`` is an object whose values are strings; return a read-only copy."""
    obj = as_object(value, path)
    return MappingProxyType({k: as_str(v, join(path, k)) for k, v in obj.items()})


def one_of(value: object, path: str, allowed: Sequence[str]) -> str:
    """Check that ``value`` is one of the ``allowed`` strings."""
    text = as_str(value, path)
    if text not in allowed:
        choices = ", ".join(f'"{a}"' for a in allowed)
        raise LockfileError(path, f'unknown value "{text}" (expected one of {choices})')
    return text


def freeze(value: object, path: str) -> JSONValue:
    """Deep-copy a JSON value into read-only form: objects become mapping proxies, arrays tuples.

    Raises:
        LockfileError: ``value`` holds something that is not JSON (e.g. NaN, a set, non-string keys).
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LockfileError(path, "numbers must be finite")
        return value
    if isinstance(value, list | tuple):
        return tuple(freeze(item, join(path, i)) for i, item in enumerate(value))
    if isinstance(value, Mapping):
        obj = as_object(value, path)
        return MappingProxyType({k: freeze(v, join(path, k)) for k, v in obj.items()})
    raise LockfileError(path, f"not a JSON value ({type(value).__name__})")


def freeze_object(value: object, path: str) -> JSONObject:
    """Like :func:`freeze`, for a value that must be a JSON object."""
    frozen = freeze(as_object(value, path), path)
    assert isinstance(frozen, Mapping)
    return frozen


def thaw(value: JSONValue) -> object:
    """Turn a frozen JSON value back into plain ``dict``/``list`` values (for ``json.dumps``)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value
