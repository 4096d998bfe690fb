"""JSON value aliases shared by the core, and the parser for JSON from outsiders (bounded depth, strict)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TypeAlias

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | Sequence["JSONValue"] | Mapping[str, "JSONValue"]
JSONObject: TypeAlias = Mapping[str, JSONValue]

MAX_DEPTH = 128
"""Deepest nesting of arrays and objects accepted from outsiders (webhook bodies, admin requests)."""


class JSONTooDeep(ValueError):
    """JSON nested deeper than the limit (a ``ValueError``, so callers treating any bad JSON alike still may)."""


def _depth_exceeds(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> JSONValue:
    """``json.loads`` for untrusted input: strict JSON (no ``NaN``/``Infinity``) nested at most ``max_depth``
    deep. Never recurses without bound.

    Raises:
        JSONTooDeep: nested too deeply.
        ValueError: not JSON (including ``NaN`` and friends); ``UnicodeDecodeError`` for bytes that are not UTF-8.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value: JSONValue = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    if text.count("[") + text.count("{") > max_depth and _depth_exceeds(value, max_depth):
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def loads_lenient(data: str | bytes) -> JSONValue:
    """Parse stored JSON for display: ``NaN``/``Infinity`` become the strings ``"NaN"``/``"Infinity"`` so the
    value can be rendered as standard JSON.

    Raises:
        ValueError: not JSON, or nested too deeply to parse.
    """
    try:
        value: JSONValue = json.loads(data, parse_constant=str)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return value
