"""``kici_adapters.postgres.notify``: listening, sending, and a listener that outlives a lost connection.

Every wait here is on a notification or a connection actually seen in PostgreSQL, never on time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from kici_adapters.postgres import notify
from kici_adapters.postgres.pool import Database
from kici_core import errors
from tests.support import waits

pytestmark = pytest.mark.anyio


async def _listeners(database: Database) -> list[int]:
    """Backend pids of the connections currently in ``LISTEN`` (their last statement was one)."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid() ORDER BY pid"
        )
        return [int(r["pid"]) for r in await cur.fetchall()]


async def _next(stream: AsyncIterator[notify.Notification], what: str) -> notify.Notification:
    with waits.within(20, what):
        return await anext(stream)


async def test_a_notification_sent_reaches_the_listener_with_its_channel_and_payload(database: Database) -> None:
    notes = notify.Notifications(database)
    async with notes.listen((notify.JOBS, notify.CANCEL)) as stream:
        await notes.send(notify.CANCEL, "run-1|0|run cancelled via API")
        await notes.send(notify.JOBS)
        first = await _next(stream, "the kici_cancel notification")
        second = await _next(stream, "the kici_jobs notification")
    assert first == notify.Notification(channel="kici_cancel", payload="run-1|0|run cancelled via API")
    assert second == notify.Notification(channel="kici_jobs", payload="")


async def test_a_notification_is_delivered_only_when_its_transaction_commits(database: Database) -> None:
    notes = notify.Notifications(database)
    async with notes.listen((notify.INBOX,)) as stream:
        with pytest.raises(RuntimeError):
            async with database.transaction() as conn:
                await notify.notify(conn, notify.INBOX, "rolled back")
                raise RuntimeError("abort the transaction")
        async with database.transaction() as conn:
            await notify.notify(conn, notify.INBOX, "committed")
        received = await _next(stream, "the committed kici_inbox notification")
    assert received.payload == "committed"


async def test_the_source_table_triggers_notify_the_source_channels(database: Database) -> None:
    notes = notify.Notifications(database)
    async with notes.listen(notify.SOURCES) as stream:
        async with database.connection() as conn:  # committed when the block ends
            await conn.execute(
                "INSERT INTO sources (routing_key, provider, app_id, name)"
                " VALUES ('github:4242', 'github', '4242', 'ci')"
            )
        received = await _next(stream, "the sources_change notification")
    assert received == notify.Notification(channel="sources_change", payload="github:4242")


async def test_a_lost_listening_connection_raises_storage_unavailable(database: Database) -> None:
    notes = notify.Notifications(database)
    async with notes.listen((notify.JOBS,)) as stream:
        pids = await waits.until(lambda: _listeners(database), what="the listener in pg_stat_activity")
        async with database.connection() as conn:
            await conn.execute("SELECT pg_terminate_backend(%(pid)s)", {"pid": pids[0]})
        with (
            waits.within(20, "the stream to fail after its backend was terminated"),
            pytest.raises(errors.StorageUnavailable),
        ):
            await anext(stream)


async def test_listen_forever_reconnects_and_says_so(database: Database) -> None:
    received: list[notify.Notification | None] = []
    arrived = anyio.Event()

    async def consume() -> None:
        nonlocal arrived
        async for note in notify.listen_forever(database, (notify.JOBS,), retry_seconds=0.0, what="test"):
            received.append(note)
            arrived, done = anyio.Event(), arrived
            done.set()

    async def until(count: int, what: str) -> None:
        with waits.within(20, what, lambda: received):
            while len(received) < count:
                await arrived.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(1, "the first connection")
        await notify.Notifications(database).send(notify.JOBS, "r1")
        await until(2, "the notification before the connection is lost")
        pids = await waits.until(lambda: _listeners(database), what="the listener in pg_stat_activity")
        async with database.connection() as conn:
            await conn.execute("SELECT pg_terminate_backend(%(pid)s)", {"pid": pids[0]})
        await until(3, "the reconnection")

        # the reconnection is reported once the new LISTEN is in effect: a notification sent now arrives
        await notify.Notifications(database).send(notify.JOBS, "r2")
        await until(4, "a notification after the reconnection")
        tg.cancel_scope.cancel()
    assert received[:3] == [None, notify.Notification(channel="kici_jobs", payload="r1"), None]
    assert received[3] == notify.Notification(channel="kici_jobs", payload="r2")
