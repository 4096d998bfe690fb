"""The embedded PostgreSQL 18 server: start, data survives a stop/start cycle, same URL after restart."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg
import pytest

from kici_adapters.postgres.embedded import EmbeddedPostgres
from tests.support.pg import start_embedded


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    server, root = start_embedded()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_server_is_postgres_18_and_accepts_connections(private_server: EmbeddedPostgres) -> None:
    with psycopg.connect(private_server.url()) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    assert int(row[0]) // 10000 == 18
    assert private_server.is_running()


def test_stop_and_start_keep_data_and_url(private_server: EmbeddedPostgres) -> None:
    url = private_server.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    private_server.stop()
    assert not private_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
    assert private_server.start() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]


def test_start_is_idempotent_and_stop_twice_is_harmless(private_server: EmbeddedPostgres) -> None:
    assert private_server.start() == private_server.url()
    private_server.stop()
    private_server.stop()
    assert not private_server.is_running()
