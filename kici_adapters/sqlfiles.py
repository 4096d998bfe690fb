"""Named SQL blocks in ``.sql`` files shipped with the package: the one form every SQL statement takes.

A block starts with a line ``-- name: <identifier>`` and runs to the next such line. Comment lines inside a
block are kept (the databases ignore them); blank leading and trailing lines are dropped. Files are read once,
when the module that uses them is imported.
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


def load(package: str, filename: str) -> dict[str, LiteralString]:
    """The named blocks of ``filename`` in ``package`` (e.g. ``load("kici_adapters.relay", "store.sql")``)."""
    return parse(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))
