"""The embedded PostgreSQL 18 server: start, data survives a stop/start cycle, same URL after restart."""

from __future__ import annotations

import shutil
import stat
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


def test_connections_need_the_generated_password(private_server: EmbeddedPostgres) -> None:
    """Another local user cannot open a superuser session: the server asks for a password that only the data
    directory's owner can read."""
    password_file = private_server.password_file
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_server.data_dir.stat().st_mode) == 0o700
    password = password_file.read_text().strip()
    assert len(password) >= 32 and f":{password}@" in private_server.url()
    no_password = f"postgresql://postgres@127.0.0.1:{private_server.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password, connect_timeout=5).close()
    wrong = f"postgresql://postgres:{'0' * 48}@127.0.0.1:{private_server.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5).close()
    hba = (private_server.pgdata / "pg_hba.conf").read_text()
    assert not any(line.split()[-1] == "trust" for line in hba.splitlines() if line.strip()
                   and not line.lstrip().startswith("#"))


def test_a_trust_cluster_from_an_older_version_gets_a_password(private_server: EmbeddedPostgres) -> None:
    """A data directory initialised with ``trust`` (and no password file) is switched to password
    authentication at its next start, keeping its data."""
    with psycopg.connect(private_server.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    private_server.stop()
    hba = private_server.pgdata / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    private_server.password_file.unlink()
    trusted = f"postgresql://postgres@127.0.0.1:{private_server.port}/postgres"
    url = private_server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [(7,)]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(trusted, connect_timeout=5).close()
