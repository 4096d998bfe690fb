"""PostgreSQL ``LISTEN``/``NOTIFY``: every channel the orchestrator uses, the listener connection and the senders.

Channels and their payloads:

* :data:`JOBS` (``kici_jobs``): queue rows were added or put back. The payload names the run or job ids a
  transaction queued (comma-separated), or is empty ("read the queue"). Dispatch drivers and the scaler listen.
* :data:`CANCEL` (``kici_cancel``): a cancel or a concurrency ``proceed`` for an agent connected to another
  process (``<run>|<force>|<reason>``, ``job:<id>|0|<reason>``, ``proceed:<job>|<run>|<agent>``).
* :data:`INBOX` (``kici_inbox``): deliveries were accepted (or freed by a recovery); processing children listen.
* :data:`SOURCES` (``sources_change``, ``generic_sources_change``): sent by the source tables' triggers
  (migration 0001) with the routing key; the Platform link re-registers its sources.

A notification is delivered only to connections listening at the time it is committed, so every listener treats
a (re)connection as "something may have been missed" and re-reads the state it watches.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass

import anyio
import psycopg
from psycopg import sql

from kici_adapters.postgres.pool import Connection, Database, connect, owned, translate_errors
from kici_adapters.postgres.queries import q
from kici_core import errors

log = logging.getLogger("kici.notify")

JOBS = "kici_jobs"
"""Queue rows added or put back; payload: comma-separated run or job ids, or empty."""
CANCEL = "kici_cancel"
"""Cancels and concurrency proceeds for agents held by another process."""
INBOX = "kici_inbox"
"""Accepted deliveries waiting for a processing child."""
SOURCES = ("sources_change", "generic_sources_change")
"""The source tables' trigger channels (payload: the changed routing key)."""

MAX_PAYLOAD_BYTES = 7999
"""PostgreSQL refuses a ``NOTIFY`` payload of 8000 bytes or more."""

NOTIFY_INTERVAL_SECONDS = 0.01
"""Least time between two inbox notifications of an :class:`InboxNotifier` during a burst of acceptances."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification received: its channel and payload (empty when none was given)."""

    channel: str
    payload: str


async def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Send ``NOTIFY channel, payload`` on ``conn``: delivered when (and only if) its transaction commits."""
    await conn.execute(q("notify"), {"channel": channel, "payload": payload})


class Notifications:
    """Listening and sending over a :class:`Database`.

    ``listen`` opens a connection of its own (outside the pool, autocommit) for as long as its block runs;
    ``send`` borrows a pooled connection for one notification.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def send(self, channel: str, payload: str = "") -> None:
        """Notify ``channel`` now (its own transaction). Raises ``StorageUnavailable``."""
        async with self._db.connection() as conn:
            await notify(conn, channel, payload)

    @asynccontextmanager
    async def listen(self, channels: Sequence[str]) -> AsyncIterator[AsyncIterator[Notification]]:
        """Listen on ``channels`` for the duration of the block; yields the stream of notifications.

        When the block is entered the ``LISTEN`` is in effect: anything notified from then on arrives, so a
        caller re-reads what it watches right there. The stream ends only by raising.

        Raises:
            StorageUnavailable: the connection could not be opened, or broke (any driver error on the
                listening connection counts as a lost connection; the caller reconnects).
        """
        async with _listening(self._db.url, channels) as stream:
            yield stream


async def listen_forever(
    db: Database, channels: Sequence[str], *, retry_seconds: float, what: str
) -> AsyncIterator[Notification | None]:
    """Every notification on ``channels``, reconnecting after ``retry_seconds`` when the connection breaks (with a
    warning naming ``what``). Yields None after each (re)connection: notifications may have been missed."""
    notifications = Notifications(db)
    while True:
        try:
            async with notifications.listen(channels) as stream:
                yield None
                async for note in stream:
                    yield note
        except errors.Unavailable as exc:
            log.warning("%s lost; reconnecting", what, extra={"error": str(exc)})
        await anyio.sleep(retry_seconds)


@asynccontextmanager
async def _listening(url: str, channels: Sequence[str]) -> AsyncIterator[AsyncIterator[Notification]]:
    with _lost(url):
        conn = await connect(url, autocommit=True)
        async with owned(conn):
            for channel in channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            stream = _stream(conn, url)
            try:
                yield stream
            finally:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()


async def _stream(conn: Connection, url: str) -> AsyncGenerator[Notification]:
    with _lost(url):
        async with aclosing(conn.notifies()) as notes:
            async for note in notes:
                yield Notification(channel=note.channel, payload=note.payload)


@contextmanager
def _lost(url: str) -> Iterator[None]:
    try:
        with translate_errors(url):
            yield
    except psycopg.Error as exc:
        raise errors.StorageUnavailable(f"notification connection lost: {type(exc).__name__}") from exc


class InboxNotifier:
    """Sends ``NOTIFY kici_inbox`` after acceptances, coalescing, off the ack path.

    ``wake()`` only sets a flag (any number of calls between two notifications cost one); ``run()`` sends the
    notifications over a dedicated autocommit connection, reconnecting when it breaks. A wake is sent at once
    unless the notifier is in a burst: when wakes arrived while the previous notification was being sent, the
    next one waits until ``interval`` after it, so a burst costs at most one notification per ``interval``.
    Acceptances spaced further apart than a notification's round trip (the usual case below some hundreds a
    second) are each announced at once, without waiting out an interval they do not need.
    """

    def __init__(self, url: str, *, interval: float = NOTIFY_INTERVAL_SECONDS) -> None:
        self._url = url
        self._interval = interval
        self._wake = anyio.Event()
        self.sent = 0
        """Notifications sent (diagnostics and tests)."""

    def wake(self) -> None:
        """Ask for a notification (call from the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        """Notify until cancelled."""
        conn: Connection | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = await connect(self._url, autocommit=True)
                    with translate_errors(self._url):
                        await notify(conn, INBOX)
                    self.sent += 1
                except (errors.Unavailable, psycopg.Error) as exc:
                    # children still find the deliveries at their next poll
                    log.warning("could not notify processing workers", extra={"error": str(exc)})
                    if conn is not None:  # closed now, not left to garbage collection
                        with anyio.CancelScope(shield=True), suppress(psycopg.Error):
                            await conn.close()
                    conn = None
                    await anyio.sleep(1.0)
                    continue
                if self._wake.is_set():  # woken while sending: a burst, paced
                    await anyio.sleep(self._interval)
        finally:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()
