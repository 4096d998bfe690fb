"""Database pool: transactions, error translation, and surviving a PostgreSQL restart."""

from __future__ import annotations

import gc
import shutil
import socket
from collections.abc import Iterator

import anyio
import pytest

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.migrate import apply_migrations
from kici_adapters.postgres.pool import Database, redact_url
from kici_core.errors import Conflict, StorageUnavailable
from tests.support import waits
from tests.support.pg import start_embedded

pytestmark = pytest.mark.anyio


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    server, root = start_embedded()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_transaction_commits_and_rolls_back(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute("INSERT INTO cluster_meta (key, value) VALUES ('a', '1')")
    with pytest.raises(RuntimeError):
        async with database.transaction() as conn:
            await conn.execute("INSERT INTO cluster_meta (key, value) VALUES ('b', '2')")
            raise RuntimeError("boom")
    async with database.connection() as conn:
        cur = await conn.execute("SELECT key FROM cluster_meta WHERE key IN ('a', 'b') ORDER BY key")
        assert [row["key"] for row in await cur.fetchall()] == ["a"]


async def test_unique_violation_becomes_conflict(database: Database) -> None:
    async with database.transaction() as conn:
        await conn.execute("INSERT INTO cluster_meta (key, value) VALUES ('dup', '1')")
    with pytest.raises(Conflict):
        async with database.transaction() as conn:
            await conn.execute("INSERT INTO cluster_meta (key, value) VALUES ('dup', '2')")


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_raises_storage_unavailable_without_password() -> None:
    url = f"postgresql://kici:s3cret-pw@127.0.0.1:{_unused_port()}/kici"
    db = Database(url, timeout=1.0, connect_timeout=1)
    with pytest.raises(StorageUnavailable) as info:
        await db.open(wait_seconds=1.0)
    assert "s3cret-pw" not in str(info.value)
    assert "s3cret-pw" not in redact_url(url)


async def test_dedicated_connection_translates_errors() -> None:
    url = f"postgresql://kici:pw123456@127.0.0.1:{_unused_port()}/kici"
    db = Database(url, timeout=1.0, connect_timeout=1)
    with pytest.raises(StorageUnavailable) as info:
        async with db.dedicated():
            pass
    assert "pw123456" not in str(info.value)


async def test_a_dedicated_connection_cancelled_while_idle_is_closed_at_once(database: Database) -> None:
    """A block on a connection of its own (a listener, a session lock) that ends by cancellation after being idle
    a while, as when a process stops, closes the connection then and there: its session ends in PostgreSQL."""
    sessions: list[int] = []
    held = anyio.Event()

    async def hold() -> None:
        async with database.dedicated() as conn:
            cur = await conn.execute("SELECT pg_backend_pid() AS pid")
            row = await cur.fetchone()
            assert row is not None
            sessions.append(int(row["pid"]))
            held.set()
            await anyio.sleep_forever()

    async def alive() -> list[int]:
        async with database.connection() as conn:
            cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%(p)s)", {"p": sessions})
            return [int(r["pid"]) for r in await cur.fetchall()]

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        with waits.within(20, "the dedicated connection to be open"):
            await held.wait()
        await anyio.sleep(0.05)  # idle for longer than psycopg's 5 ms busy budget, as between two uses
        tg.cancel_scope.cancel()

    async def ended() -> bool:
        return not await alive()

    # garbage collection would end it too, eventually: the bound is short and nothing is collected meanwhile
    gc.disable()
    try:
        await waits.until(ended, what=f"the session {sessions} to end", bound=5, seen=alive)
    finally:
        gc.enable()


async def test_pool_survives_a_postgres_restart(private_server: EmbeddedPostgres) -> None:
    url = private_server.url()
    await anyio.to_thread.run_sync(apply_migrations, url)
    db = Database(url, min_size=2, max_size=4, timeout=2.0, connect_timeout=1)
    await db.open()
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO cluster_meta (key, value) VALUES ('before', 'x')")

        await anyio.to_thread.run_sync(private_server.stop)
        with anyio.fail_after(30):
            with pytest.raises(StorageUnavailable):
                async with db.connection() as conn:
                    await conn.execute("SELECT 1")

        await anyio.to_thread.run_sync(private_server.start)
        with anyio.fail_after(30):
            for _ in range(5):  # every connection the pool hands out now works
                async with db.connection() as conn:
                    cur = await conn.execute("SELECT value FROM cluster_meta WHERE key = 'before'")
                    assert await cur.fetchone() == {"value": "x"}
    finally:
        await db.close()
