"""The durable Platform outbox: ``PlatformLink`` over the ``platform_outbox`` table, and its drainer.

``PgPlatformOutbox.publish`` inserts a domain event (``kici_core.platform_events``); state-change code inserts
them in its own transactions too (kinds ``run_status``, ``job_status``, ``step_status``, ``log_lines``; see
``kici_adapters.postgres.runs``). While the relay link is authenticated, :meth:`PgPlatformOutbox.drain` turns
each row into its frame (``kici_adapters.platform.messages.frame``) and sends the rows oldest first and deletes
them once the Platform's WebSocket layer has received them (a ping sent after the batch was answered), so
neither a dropped link nor a restart loses a message: delivery is at least once. Rows beyond the cap are
dropped oldest first and counted in ``kici_platform_buffer_dropped_total``. The contract and its in-memory
twin are in ``kici_adapters.platform.outbox``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from psycopg.types.json import Jsonb

from kici_adapters import metrics
from kici_adapters.platform import messages
from kici_adapters.platform import outbox as platform_outbox
from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Database
from kici_core import platform_events

__all__ = ["PgPlatformOutbox"]

_SQL = queries.load("outbox.sql")


class PgPlatformOutbox:
    """``PlatformLink`` over the ``platform_outbox`` table (see the module docstring).

    Args:
        db: the pool.
        cap: rows kept at most; older ones are dropped by :meth:`trim`.
        batch_size: rows sent per drain transaction.
    """

    def __init__(
        self,
        db: Database,
        *,
        cap: int = platform_outbox.DEFAULT_CAP,
        batch_size: int = platform_outbox.DEFAULT_BATCH,
        ids: Callable[[], str] = platform_outbox.new_id,
        now_ms: Callable[[], int] = platform_outbox.now_ms,
    ) -> None:
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

    async def drain(self, send: platform_outbox.SendFrame, confirm: platform_outbox.Confirm) -> int:
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
                    await send(
                        messages.frame(
                            row["kind"],
                            payload,
                            message_id=self._ids(),
                            timestamp_ms=platform_outbox.epoch_ms(row["created_at"]),
                        )
                    )
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
