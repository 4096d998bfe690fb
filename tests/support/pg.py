"""Shared PostgreSQL helpers and fixtures for integration and e2e tests.

One server per test session: ``KICI_TEST_DATABASE_URL`` when set (a superuser URL on a disposable
server), else an embedded PostgreSQL 18 in a temporary directory. A template database with every
migration applied is built once; each test gets its own clone (``CREATE DATABASE ... TEMPLATE``), which
is fast and fully isolated.

Use from a conftest::

    from tests.support.pg import pg_server, pg_template, db_url, database  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.migrate import apply_migrations
from kici_adapters.postgres.pool import Database

TEMPLATE_DB = "kici_template"


@dataclass(frozen=True, slots=True, kw_only=True)
class PgServer:
    """The session's server: ``admin_url`` points at its maintenance database."""

    admin_url: str
    embedded: EmbeddedPostgres | None

    def url_for(self, database: str) -> str:
        """The same server, another database."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + database))


def create_database(server: PgServer, name: str, *, template: str | None = None) -> str:
    """Create ``name`` (optionally from ``template``) and return its URL."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {} STRATEGY FILE_COPY").format(query, sql.Identifier(template))
        conn.execute(query)
    return server.url_for(name)


def drop_database(server: PgServer, name: str) -> None:
    """Drop ``name``, disconnecting anyone still using it."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start_embedded() -> tuple[EmbeddedPostgres, Path]:
    """Start a throwaway embedded server; returns it and the directory to delete afterwards.

    The directory is made with ``mkdtemp`` in the system temp dir, which the server's unprivileged account can
    reach when tests run as root (the server then owns it): the cluster stays in it, wherever the checkout is.
    """
    root = Path(tempfile.mkdtemp(prefix="kici-pg-"))
    server = EmbeddedPostgres(root, durable=False)
    try:
        server.start()
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server, root


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (external or embedded)."""
    external = os.environ.get("KICI_TEST_DATABASE_URL")
    if external:
        yield PgServer(admin_url=external, embedded=None)
        return
    embedded, root = start_embedded()
    try:
        yield PgServer(admin_url=embedded.url(), embedded=embedded)
    finally:
        embedded.stop(immediate=True)  # the cluster is deleted next: no shutdown checkpoint
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> Iterator[str]:
    """Name of a template database with every migration applied (built once per session, dropped after)."""
    name = f"{TEMPLATE_DB}_{uuid.uuid4().hex[:8]}" if pg_server.embedded is None else TEMPLATE_DB
    drop_database(pg_server, name)
    url = create_database(pg_server, name)
    try:
        apply_migrations(url)
        yield name
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def db_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """URL of a fresh database cloned from the migrated template, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server, name, template=pg_template)
    try:
        yield url
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def empty_db_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh, empty database (no migrations), dropped after the test."""
    name = f"e_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server, name)
    try:
        yield url
    finally:
        drop_database(pg_server, name)


@asynccontextmanager
async def _pool(url: str) -> AsyncIterator[Database]:
    db = Database(url, max_size=4, timeout=5.0)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    """An opened :class:`Database` on a fresh migrated database."""
    async with _pool(db_url) as db:
        yield db


async def scalar(db: Database, query: Any) -> Any:
    """The first column of the first row of ``query``."""
    async with db.connection() as conn:
        cur = await conn.execute(query)
        row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


@pytest.fixture
async def second_db(db_url: str) -> AsyncIterator[Database]:
    """Another pool on the same database: a second orchestrator process."""
    async with _pool(db_url) as db:
        yield db
