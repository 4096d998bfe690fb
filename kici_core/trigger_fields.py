"""Readers for the fields of one lock-file trigger object: strings, lists, globs, branch patterns
and JSONPath conditions.

Every reader raises :class:`LockfileError` naming the JSON path of the offending value, and every
glob, regex and JSONPath is compiled while reading, so a trigger that parses can always be matched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kici_core import globs, jsregex
from kici_core.errors import LockfileError
from kici_core.jsontypes import JSONValue
from kici_core.lockfile_values import kind_of

__all__ = ["FieldReader", "JsonCondition", "LockBranchPattern", "parse_branch_pattern"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LockBranchPattern:
    """A branch/tag/ref/repo pattern: ``{"type": "glob"|"regex", "pattern", "flags"?}``."""

    type: Literal["glob", "regex"]
    pattern: str
    flags: str = ""

    def display(self) -> str:
        """Human form for traces: the glob itself, or ``/source/flags`` for a regex."""
        return self.pattern if self.type == "glob" else f"/{self.pattern}/{self.flags}"


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonCondition:
    """One ``{jsonpath: expected}`` entry of a ``match``/``not`` filter.

    ``expected`` is a list (any element), a ``/body/flags`` string (regex search on string
    results, compiled into ``regex``) or any other JSON value (strict equality).
    """

    path: globs.JsonPath
    expected: JSONValue
    regex: re.Pattern[str] | None = field(default=None, compare=False)


class FieldReader:
    """Field accessors over one trigger object (at JSON path ``path``) that raise path-named errors."""

    def __init__(self, obj: Mapping[str, object], path: str) -> None:
        self.obj = obj
        self.path = path

    def at(self, key: str) -> str:
        """The JSON path of field ``key``."""
        return f"{self.path}.{key}"

    def str_req(self, key: str) -> str:
        """A required string field."""
        value = self.obj.get(key)
        if not isinstance(value, str):
            reason = "is required" if value is None else f"expected a string, got {kind_of(value)}"
            raise LockfileError(self.at(key), reason)
        return value

    def str_opt(self, key: str) -> str | None:
        """An optional string field (None when absent or null)."""
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise LockfileError(self.at(key), f"expected a string, got {kind_of(value)}")
        return value

    def _list(self, key: str) -> Sequence[object]:
        value = self.obj.get(key)
        if value is None:
            return ()
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise LockfileError(self.at(key), f"expected an array, got {kind_of(value)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """An optional array of strings (``()`` when absent)."""
        items = self._list(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise LockfileError(f"{self.at(key)}[{i}]", f"expected a string, got {kind_of(item)}")
        return tuple(items)  # type: ignore[arg-type]

    def globs_list(self, key: str, *, allow_negation: bool) -> tuple[str, ...]:
        """An optional array of globs, each compiled (a leading ``!`` allowed when asked)."""
        items = self.strings(key)
        for i, item in enumerate(items):
            body = item[1:] if allow_negation and item.startswith("!") else item
            _check_glob(body, f"{self.at(key)}[{i}]")
        return items

    def patterns(self, key: str) -> tuple[LockBranchPattern, ...]:
        """An optional array of branch patterns (see :func:`parse_branch_pattern`)."""
        return tuple(parse_branch_pattern(item, f"{self.at(key)}[{i}]") for i, item in enumerate(self._list(key)))

    def mapping_opt(self, key: str) -> Mapping[str, JSONValue] | None:
        """An optional object field (None when absent or null)."""
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise LockfileError(self.at(key), f"expected an object, got {kind_of(value)}")
        return value

    def conditions(self, key: str) -> tuple[JsonCondition, ...]:
        """An optional ``{jsonpath: expected}`` object, each path and ``/regex/`` compiled."""
        value = self.mapping_opt(key)
        if not value:
            return ()
        out: list[JsonCondition] = []
        for jp, expected in value.items():
            where = f"{self.at(key)}[{jp!r}]"
            try:
                compiled = globs.compile_jsonpath(jp)
            except globs.PatternError as exc:
                raise LockfileError(where, exc.message) from None
            out.append(JsonCondition(path=compiled, expected=expected, regex=_expected_regex(expected, where)))
        return tuple(out)


_SLASH_REGEX = re.compile(r"^/(.+)/([gimsuy]*)$", re.DOTALL)


def _expected_regex(expected: JSONValue, where: str) -> re.Pattern[str] | None:
    if not isinstance(expected, str):
        return None
    m = _SLASH_REGEX.match(expected)
    if m is None:
        return None
    try:
        jsregex.check_redos(m.group(1), m.group(2))
        return globs.compile_js_regex(m.group(1), m.group(2))
    except globs.PatternError as exc:
        raise LockfileError(where, exc.message) from None


def _check_glob(pattern: str, where: str) -> None:
    try:
        globs.compile_glob(pattern)
    except globs.PatternError as exc:
        raise LockfileError(where, f"invalid glob {pattern!r}: {exc.message}") from None


def parse_branch_pattern(obj: object, path: str) -> LockBranchPattern:
    """Parse and validate one ``LockBranchPattern`` (the glob or regex is compiled).

    Raises:
        LockfileError: not an object, bad ``type``, missing ``pattern`` or an invalid glob/regex.
    """
    if not isinstance(obj, Mapping):
        raise LockfileError(path, f"expected a pattern object, got {kind_of(obj)}")
    kind = obj.get("type")
    if kind not in ("glob", "regex"):
        raise LockfileError(f"{path}.type", f'expected "glob" or "regex", got {kind!r}')
    pattern = obj.get("pattern")
    if not isinstance(pattern, str):
        raise LockfileError(f"{path}.pattern", f"expected a string, got {kind_of(pattern)}")
    flags = obj.get("flags", "")
    if flags is None:
        flags = ""
    if not isinstance(flags, str):
        raise LockfileError(f"{path}.flags", f"expected a string, got {kind_of(flags)}")
    if kind == "regex":
        try:
            jsregex.check_redos(pattern, flags)
            globs.compile_js_regex(pattern, flags)
        except globs.PatternError as exc:
            raise LockfileError(path, exc.message) from None
        return LockBranchPattern(type="regex", pattern=pattern, flags=flags)
    # A leading "!" in a branch list is the glob engine's negation (not an exclusion);
    # in repos it is an exclusion. Either way the rest must be a valid glob.
    _check_glob(pattern.lstrip("!") if pattern.startswith("!") else pattern, path)
    return LockBranchPattern(type="glob", pattern=pattern, flags=flags)
