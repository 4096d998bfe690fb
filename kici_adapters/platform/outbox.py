"""The Platform outbox: the durable ``PlatformLink`` and its drainer.

The outbox stores domain events (``kici_core.platform_events``), not frames: ``PgPlatformOutbox.publish``
inserts one into ``platform_outbox``; state-change code inserts them in its own transactions too (kinds
``run_status``, ``job_status``, ``step_status``, ``log_lines``; see ``kici_adapters.postgres.runs``). While the
relay link is authenticated, :meth:`PgPlatformOutbox.drain` turns each row into its frame
(``kici_adapters.platform.messages.frame``, the one place that knows the frames) and sends the rows oldest
first and deletes them once the Platform's WebSocket layer has received them (a ping sent after the batch was
answered), so neither a dropped link nor a restart loses a message: delivery is at least once. Rows beyond the
cap are dropped oldest first and counted in ``kici_platform_buffer_dropped_total``.

``MemoryPlatformOutbox`` is the same contract in memory (upstream's ring buffer), for tests and tools.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any

import anyio
from psycopg.types.json import Jsonb

from kici_adapters import metrics
from kici_adapters.platform import messages
from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Database
from kici_core import platform_events
from kici_core.jsontypes import JSONObject

DEFAULT_CAP = 10_000
DEFAULT_BATCH = 200

SendFrame = Callable[[JSONObject], Awaitable[None]]
"""Writes one frame to the socket; raises when the link is gone."""
Confirm = Callable[[], Awaitable[None]]
"""Returns once the peer has received every frame sent before the call (a ping/pong round trip)."""

_SQL = queries.parse(resources.files("kici_adapters.platform").joinpath("outbox.sql").read_text(encoding="utf-8"))


def _new_id() -> str:
    return str(uuid.uuid4())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _epoch_ms(value: object) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else _now_ms()


class PgPlatformOutbox:
    """``PlatformLink`` over the ``platform_outbox`` table (see the module docstring).

    Args:
        db: the pool.
        cap: rows kept at most; older ones are dropped by :meth:`trim`.
        batch_size: rows sent per drain transaction.
    """

    def __init__(self, db: Database, *, cap: int = DEFAULT_CAP, batch_size: int = DEFAULT_BATCH,
                 ids: Callable[[], str] = _new_id, now_ms: Callable[[], int] = _now_ms) -> None:
        self._db = db
        self.cap = cap
        self._batch = batch_size
        self._ids = ids
        self._now_ms = now_ms
        self._wake = anyio.Event()

    async def publish(self, event: platform_events.PlatformEvent) -> None:
        """Store ``event`` durably for the Platform.

        Raises:
            StorageUnavailable: the database cannot be reached.
        """
        async with self._db.connection() as conn:
            await conn.execute(_SQL["outbox_insert"], {"kind": event.KIND, "payload": Jsonb(event.record())})
        self.wake()

    def wake(self) -> None:
        """Tell a waiting drainer that rows arrived."""
        self._wake.set()

    async def wait(self, poll_seconds: float) -> None:
        """Wait until :meth:`wake` is called or ``poll_seconds`` pass (rows written by other code are found
        by polling)."""
        with anyio.move_on_after(poll_seconds):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def drain(self, send: SendFrame, confirm: Confirm) -> int:
        """Send every stored row oldest first, deleting each batch once ``confirm`` returns; returns the count.

        Stops at the first failed send (the exception propagates): the unsent rows, and the sent but
        unconfirmed ones, stay for the next connection.
        """
        total = 0
        while True:
            async with self._db.transaction() as conn:
                cur = await conn.execute(_SQL["outbox_batch"], {"limit": self._batch})
                rows: list[dict[str, Any]] = await cur.fetchall()
                if not rows:
                    return total
                for row in rows:
                    payload = row["payload"] if isinstance(row["payload"], dict) else {}
                    await send(messages.frame(row["kind"], payload, message_id=self._ids(),
                                              timestamp_ms=_epoch_ms(row["created_at"])))
                await confirm()
                await conn.execute(_SQL["outbox_delete"], {"seqs": [r["seq"] for r in rows]})
            total += len(rows)

    async def trim(self) -> int:
        """Drop the oldest rows beyond the cap; returns how many (added to the drop counter)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["outbox_trim"], {"cap": self.cap})
            dropped = max(cur.rowcount, 0)
        if dropped:
            metrics.platform_buffer_dropped.inc(dropped)
        return dropped

    async def size(self) -> int:
        """Rows waiting to be sent."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["outbox_size"])
            row = await cur.fetchone()
        return int(row["n"]) if row else 0


class MemoryPlatformOutbox:
    """The outbox contract in memory: a FIFO of at most ``cap`` events (oldest dropped and counted), each turned
    into its frame when sent."""

    def __init__(self, *, cap: int = DEFAULT_CAP, ids: Callable[[], str] = _new_id,
                 now_ms: Callable[[], int] = _now_ms) -> None:
        self.cap = cap
        self.items: collections.deque[tuple[platform_events.PlatformEvent, int]] = collections.deque()
        self.dropped = 0
        self._ids = ids
        self._now_ms = now_ms
        self._wake = anyio.Event()

    async def publish(self, event: platform_events.PlatformEvent) -> None:
        """Queue ``event`` (stamped with the current time)."""
        self.items.append((event, self._now_ms()))
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, poll_seconds: float) -> None:
        with anyio.move_on_after(poll_seconds):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def drain(self, send: SendFrame, confirm: Confirm) -> int:
        """Send queued messages in order; a message leaves the queue only after ``confirm`` returns."""
        total = 0
        while self.items:
            batch = list(self.items)[:DEFAULT_BATCH]
            for event, stamped in batch:
                await send(messages.frame(event.KIND, event.record(), message_id=self._ids(), timestamp_ms=stamped))
            await confirm()
            for _ in batch:
                self.items.popleft()
            total += len(batch)
        return total

    async def trim(self) -> int:
        dropped = 0
        while len(self.items) > self.cap:
            self.items.popleft()
            dropped += 1
        if dropped:
            self.dropped += dropped
            metrics.platform_buffer_dropped.inc(dropped)
        return dropped

    async def size(self) -> int:
        return len(self.items)
