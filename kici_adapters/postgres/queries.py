"""Named SQL blocks of the PostgreSQL adapters, loaded once at import.

``queries.sql`` holds the blocks shared by several stores (:func:`q` reads them); a store with many statements of
its own keeps them in ``<module>.sql`` next to it (:func:`load`). The format is :mod:`kici_adapters.sqlfiles`'.
"""

from __future__ import annotations

from typing import LiteralString

from kici_adapters import sqlfiles

PACKAGE = "kici_adapters.postgres"

parse = sqlfiles.parse


def load(filename: str) -> dict[str, LiteralString]:
    """The named blocks of ``filename`` in this package, by name."""
    return sqlfiles.load(PACKAGE, filename)


QUERIES: dict[str, LiteralString] = load("queries.sql")
"""Every named query of ``queries.sql``, by name."""


def q(name: str) -> LiteralString:
    """The query called ``name``. Raises ``KeyError`` for an unknown name (a bug, caught by the tests)."""
    return QUERIES[name]
