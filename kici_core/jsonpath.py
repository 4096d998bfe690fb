"""Paths into JSON documents: the JSONPath subset of lock-file ``match`` / ``not`` filters, and
the plain key lookups (:func:`get_in`, :func:`dot_path`) used by event normalisation, dedup keys
and trigger checks.

Supported JSONPath: ``$`` root, ``.name``, ``['name']`` / ``["name"]``, ``[n]`` (negative counts
from the end), ``.*`` / ``[*]`` wildcards and ``..name`` / ``..*`` recursive descent. Paths are
compiled once (``functools.lru_cache``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kici_core.jsontypes import JSONValue
from kici_core.patterns import PatternError

__all__ = ["JsonPath", "compile_jsonpath", "dot_path", "get_in"]


def get_in(doc: object, keys: Iterable[str]) -> object:
    """The value reached from ``doc`` by following object ``keys``; None when a key is missing or a
    step is not an object."""
    node = doc
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def dot_path(doc: object, path: str) -> str | None:
    """The non-empty string at a dot-notation ``path`` (``a.b.c``; a leading ``$`` and ``.`` are
    ignored, an empty path is ``doc`` itself), else None (missing, or not a non-empty string)."""
    path = path.removeprefix("$").removeprefix(".")
    value = get_in(doc, path.split(".") if path else ())
    return value if isinstance(value, str) and value else None


_Step = tuple[str, str | int | None]  # ("key", name) | ("index", n) | ("wild", None) | ("desc", name|None)
_JP_TOKEN = re.compile(
    r"""\.\.(?P<dname>[A-Za-z_$][\w$-]*|\*)"""
    r"""|\.(?P<name>[A-Za-z_$][\w$-]*|\*)"""
    r"""|\[\s*(?:(?P<idx>-?\d+)|'(?P<sq>(?:[^'\\]|\\.)*)'|"(?P<dq>(?:[^"\\]|\\.)*)"|(?P<star>\*))\s*\]"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonPath:
    """A compiled JSONPath of the supported subset.

    Supported: ``$`` root, ``.name``, ``['name']`` / ``["name"]``, ``[n]`` (negative counts from
    the end), ``.*`` / ``[*]`` wildcards and ``..name`` / ``..*`` recursive descent. A path
    without a leading ``$`` is taken relative to the root. Filters, slices and unions are not
    supported.
    """

    source: str
    steps: tuple[_Step, ...]

    def find(self, doc: JSONValue) -> list[JSONValue]:
        """Every value the path selects in ``doc`` (in document order)."""
        current: list[JSONValue] = [doc]
        for kind, arg in self.steps:
            nxt: list[JSONValue] = []
            for node in current:
                if kind == "desc":
                    for sub in _descendants(node):
                        nxt.extend(_select(sub, "wild" if arg is None else "key", arg))
                else:
                    nxt.extend(_select(node, kind, arg))
            current = nxt
        return current


def _select(node: JSONValue, kind: str, arg: str | int | None) -> list[JSONValue]:
    if isinstance(node, dict):
        if kind == "key":
            return [node[arg]] if isinstance(arg, str) and arg in node else []
        if kind == "wild":
            return list(node.values())
        return []
    if isinstance(node, list):
        if kind == "index" and isinstance(arg, int):
            if -len(node) <= arg < len(node):
                return [node[arg]]
            return []
        if kind == "wild":
            return list(node)
    return []


def _descendants(node: JSONValue) -> list[JSONValue]:
    out: list[JSONValue] = [node]
    if isinstance(node, dict):
        for v in node.values():
            out.extend(_descendants(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_descendants(v))
    return out


@functools.lru_cache(maxsize=1024)
def compile_jsonpath(path: str) -> JsonPath:
    """Parse a JSONPath of the supported subset (see :class:`JsonPath`).

    Raises:
        PatternError: the path uses unsupported or invalid syntax.
    """
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    elif text and not text.startswith((".", "[")):
        text = "." + text
    steps: list[_Step] = []
    pos = 0
    while pos < len(text):
        m = _JP_TOKEN.match(text, pos)
        if m is None:
            raise PatternError(f"unsupported JSONPath {path!r} at {text[pos:]!r}")
        if m.group("dname") is not None:
            d = m.group("dname")
            steps.append(("desc", None if d == "*" else d))
        elif m.group("name") is not None:
            nm = m.group("name")
            steps.append(("wild", None) if nm == "*" else ("key", nm))
        elif m.group("idx") is not None:
            steps.append(("index", int(m.group("idx"))))
        elif m.group("star") is not None:
            steps.append(("wild", None))
        else:
            quoted = m.group("sq") if m.group("sq") is not None else m.group("dq")
            steps.append(("key", re.sub(r"\\(.)", r"\1", quoted)))
        pos = m.end()
    return JsonPath(source=path, steps=tuple(steps))
