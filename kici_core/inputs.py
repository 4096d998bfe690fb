"""Typed ``inputs`` of ``dispatch`` and ``schedule`` triggers (lock-file spec §2.4): validation and defaults.

A trigger's ``inputs`` maps an input name to a descriptor ``{type, optional, nullable, default?, values?,
literal?, min?, max?, pattern?, description?}`` with ``type`` one of ``string``, ``number``, ``integer``,
``boolean``, ``enum`` or ``literal``. :func:`resolve` checks the values a caller gave against the descriptors,
fills in defaults and returns the inputs a run receives, or raises :class:`InputErrors` listing every problem
with the path of the offending value (``inputs.count``).

Values may arrive as JSON values (admin API) or as text (``--input k=v`` on the command line): a string is
converted to the declared type when it spells one (``"3"`` for a number, ``"true"`` for a boolean). ``min`` and
``max`` bound a number's value and a string's length; ``pattern`` is a JavaScript regular expression searched in
a string. An input the trigger does not declare is an error, so a typo never goes unnoticed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from kici_core import jsregex
from kici_core.errors import InvalidInput
from kici_core.jsontypes import JSONValue

__all__ = ["InputError", "InputErrors", "resolve"]


@dataclass(frozen=True, slots=True)
class InputError:
    """One problem: the JSON path of the value (``("inputs", "count")``) and what is wrong."""

    path: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return f"{'.'.join(self.path)}: {self.message}"


class InputErrors(InvalidInput):
    """The inputs do not satisfy the trigger's descriptors (``errors`` lists each problem)."""

    def __init__(self, errors: list[InputError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def _number(value: JSONValue) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) and value.strip() else None
    return None


def _bound(desc: Mapping[str, JSONValue], key: str) -> float | None:
    raw = desc.get(key)
    return float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None


def _range(amount: float, desc: Mapping[str, JSONValue], what: str) -> str | None:
    low, high = _bound(desc, "min"), _bound(desc, "max")
    if low is not None and amount < low:
        return f"{what} must be at least {low:g}"
    if high is not None and amount > high:
        return f"{what} must be at most {high:g}"
    return None


def _same(value: JSONValue, allowed: JSONValue) -> bool:
    """``value`` equals ``allowed``; text from a command line matches a number or boolean it spells."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        if isinstance(value, str) and isinstance(allowed, bool):
            return value == ("true" if allowed else "false")
        return value is allowed
    if isinstance(value, str) and isinstance(allowed, int | float):
        return _number(value) == float(allowed)
    return value == allowed


def _convert(name: str, desc: Mapping[str, JSONValue], value: JSONValue) -> JSONValue:
    """The value of one declared input in its declared type. Raises ``ValueError`` with the reason."""
    kind = desc.get("type")
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError("expected a string")
        problem = _range(len(value), desc, "length")
        if problem is not None:
            raise ValueError(problem)
        pattern = desc.get("pattern")
        if isinstance(pattern, str):
            try:
                matched = jsregex.js_regex_search(pattern, "", value)
            except InvalidInput:
                raise ValueError(f"the declared pattern {pattern!r} is not a valid regular expression") from None
            if not matched:
                raise ValueError(f"does not match the pattern {pattern!r}")
        return value
    if kind in ("number", "integer"):
        number = _number(value)
        if number is None:
            raise ValueError(f"expected {'an integer' if kind == 'integer' else 'a number'}")
        if kind == "integer" and not number.is_integer():
            raise ValueError("expected an integer")
        problem = _range(number, desc, "value")
        if problem is not None:
            raise ValueError(problem)
        return int(number) if number.is_integer() else number
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise ValueError("expected a boolean (true or false)")
    if kind == "enum":
        values = desc.get("values")
        allowed: list[JSONValue] = list(values) if isinstance(values, list | tuple) else []
        for option in allowed:
            if _same(value, option):
                return option
        shown = ", ".join(str(v) for v in allowed)
        raise ValueError(f"must be one of: {shown}")
    if kind == "literal":
        expected = desc.get("literal")
        if _same(value, expected):
            return expected
        raise ValueError(f"must be {expected!r}")
    raise ValueError(f"the input is declared with an unknown type {kind!r}")


def resolve(
    descriptors: Mapping[str, JSONValue] | None, given: Mapping[str, JSONValue], *, path: str = "inputs"
) -> dict[str, JSONValue]:
    """The inputs a run receives: ``given`` checked against ``descriptors``, converted, defaults filled in.

    Args:
        descriptors: the trigger's ``inputs`` (None or ``{}``: the trigger declares none).
        given: the caller's values by input name.
        path: the first element of every error path.

    Raises:
        InputErrors: every problem found (an unknown input, a missing required one, a wrong type, a value out
            of range, ...), each with the path of the value.
    """
    declared = dict(descriptors or {})
    problems: list[InputError] = []
    out: dict[str, JSONValue] = {}
    for name in given:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(InputError((path, name), f"unknown input (the trigger declares: {known})"))
    for name, raw_desc in declared.items():
        desc: Mapping[str, JSONValue] = raw_desc if isinstance(raw_desc, Mapping) else {}
        if name not in given:
            if "default" in desc:
                out[name] = desc["default"]
            elif desc.get("optional") is True:
                continue
            else:
                problems.append(InputError((path, name), "required"))
            continue
        value = given[name]
        if value is None:
            if desc.get("nullable") is True:
                out[name] = None
            else:
                problems.append(InputError((path, name), "may not be null"))
            continue
        try:
            out[name] = _convert(name, desc, value)
        except ValueError as exc:
            problems.append(InputError((path, name), str(exc)))
    if problems:
        raise InputErrors(problems)
    return out
