"""Named SQL blocks from ``queries.sql``, loaded once at import.

A block starts with a line ``-- name: <identifier>`` and runs to the next such line. Comment lines inside a
block are kept (PostgreSQL ignores them); blank leading and trailing lines are dropped.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$")


def parse(text: str) -> dict[str, LiteralString]:
    """Split ``text`` into ``{name: sql}``. Raises ``ValueError`` on a duplicate or empty block."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            name = match.group(1)
            if name in blocks:
                raise ValueError(f"duplicate query name {name!r}")
            current = blocks[name] = []
        elif current is not None:
            current.append(line)
    out: dict[str, LiteralString] = {}
    for name, lines in blocks.items():
        body = "\n".join(lines).strip()
        if not body:
            raise ValueError(f"query {name!r} is empty")
        # The text comes from a file shipped with the package, never from input: a literal in all but name.
        out[name] = body
    return out


def _load() -> dict[str, LiteralString]:
    text = resources.files("kici_adapters.postgres").joinpath("queries.sql").read_text(encoding="utf-8")
    return parse(text)


QUERIES: dict[str, LiteralString] = _load()
"""Every named query, by name."""


def q(name: str) -> LiteralString:
    """The query called ``name``. Raises ``KeyError`` for an unknown name (a bug, caught by the tests)."""
    return QUERIES[name]
