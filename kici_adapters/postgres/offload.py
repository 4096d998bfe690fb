"""``PayloadOffloader``: moves accepted webhook bodies from ``delivery_payloads`` to object storage.

Acceptance stores each gzipped body in the database, in the same commit as its ``event_log`` row, so the hot
path never waits for object storage (decision 2 holds with one commit). This loop then, per pass:

1. claims a batch of ``delivery_payloads`` rows with ``FOR UPDATE SKIP LOCKED`` (so any number of processes
   may run it at once, each moving different rows),
2. writes each body to the BlobStore under the entry's ``payload_key`` (``put`` is durable when it returns),
3. deletes the rows whose object was written, and commits.

A failed write leaves its row for a later pass (logged, counted in ``kici_payload_offload_failures_total``):
nothing is lost. A crash between the write and the commit only repeats an idempotent write. A row whose object
can never be written (its key is refused, or the write fails in an unexpected way) is skipped from then on by
this process (logged, counted in ``kici_payload_offload_skipped_total``): its body stays readable in the database
and it never holds back the rows behind it. Only a pass that moved nothing backs off. Readers look in
the database first and in object storage second, and a row disappears only after its object exists, so a
payload is always readable from one of the two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from kici_adapters import metrics
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.queries import q
from kici_core import errors
from kici_core.keys import event_log_payload_key
from kici_core.ports import BlobStore

DEFAULT_BATCH = 256
DEFAULT_POLL_SECONDS = 0.5
DEFAULT_GATHER_SECONDS = 0.2
"""After a wake-up, how long a pass waits for more rows: nothing waits for the offload (readers look in the
database first), so under load a pass moves a few hundred bodies with one claim, one delete and about one
journal commit of the filesystem store, instead of a handful per acceptance."""
DEFAULT_PUT_CONCURRENCY = 32
MAX_RETRY_SECONDS = 30.0
MAX_SKIPPED = 10_000
"""Most rows one offloader remembers to skip (the oldest are forgotten and tried again)."""
_log = logging.getLogger("kici.offload")


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadPass:
    """What one pass did: bodies moved to object storage, and bodies left behind after a failed write."""

    moved: int
    failed: int
    skipped: int = 0


class PayloadOffloader:
    """Background mover of accepted bodies from the database to object storage.

    Args:
        db: the connection pool.
        blobs: the object store bodies go to.
        batch: most rows claimed per pass.
        poll_seconds: idle wait between passes when nobody calls :meth:`wake`.
        gather_seconds: wait between a wake-up and the pass it asks for (lets rows accumulate).
        put_concurrency: object writes in flight at once within a pass.
        on_pass: called after every committed pass that found rows (observability, tests).
    """

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        batch: int = DEFAULT_BATCH,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        gather_seconds: float = DEFAULT_GATHER_SECONDS,
        put_concurrency: int = DEFAULT_PUT_CONCURRENCY,
        on_pass: Callable[[OffloadPass], None] | None = None,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._batch = max(1, batch)
        self._poll = poll_seconds
        self._gather = gather_seconds
        self._put_limit = max(1, put_concurrency)
        self._wake = anyio.Event()
        self._on_pass = on_pass
        self.moved = 0
        """Bodies moved since start (for tests and diagnostics)."""
        self.skipped: dict[Any, None] = {}
        """Rows given up on (event_log ids, oldest first): never claimed again by this offloader."""

    def wake(self) -> None:
        """Ask for a pass now instead of at the next poll (call from the event loop)."""
        self._wake.set()

    async def run_once(self) -> OffloadPass:
        """One pass over at most ``batch`` rows.

        Raises:
            StorageUnavailable: the database did not answer (object-storage failures never raise: the rows
                stay and are counted).
        """
        async with self._db.transaction() as conn:
            cur = await conn.execute(q("offload_claim"), {"limit": self._batch, "skip": list(self.skipped)})
            rows = await cur.fetchall()
            if not rows:
                return OffloadPass(moved=0, failed=0)
            done: list[Any] = []
            skipped: list[Any] = []
            limiter = anyio.CapacityLimiter(self._put_limit)
            async with anyio.create_task_group() as tg:
                for row in rows:
                    tg.start_soon(self._put, row, done, skipped, limiter)
            if done:
                await conn.execute(q("offload_delete"), {"ids": done})
        for event_log_id in skipped:
            self.skipped[event_log_id] = None
        while len(self.skipped) > MAX_SKIPPED:
            del self.skipped[next(iter(self.skipped))]
        result = OffloadPass(moved=len(done), failed=len(rows) - len(done) - len(skipped), skipped=len(skipped))
        self.moved += result.moved
        if self._on_pass is not None:
            self._on_pass(result)
        return result

    async def _put(
        self, row: Mapping[str, Any], done: list[Any], skipped: list[Any], limiter: anyio.CapacityLimiter
    ) -> None:
        async with limiter:
            try:
                key = row["payload_key"] or event_log_payload_key(row["org_id"], row["delivery_id"])
                await self._blobs.put(key, bytes(row["body"]))
            except (errors.Unavailable, OSError) as exc:
                metrics.payload_offload_failures.inc()
                _log.warning(
                    "payload offload failed; kept in the database for the next pass",
                    extra={"deliveryId": row["delivery_id"], "error": str(exc)},
                )
                return
            except Exception as exc:  # this row can never be written: skip it, never stall the rows behind it
                metrics.payload_offload_skipped.inc()
                _log.error(
                    "payload cannot be offloaded; skipped (its body stays in the database)",
                    extra={"deliveryId": row["delivery_id"], "error": f"{type(exc).__name__}: {exc}"},
                )
                skipped.append(row["event_log_id"])
                return
        done.append(row["event_log_id"])

    async def pending(self) -> int:
        """Bodies still held in the database."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("offload_pending"))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def run(self) -> None:
        """Offload until cancelled: full batches back to back, otherwise every ``poll_seconds`` or on
        :meth:`wake`; after a failure (object storage or database down) back off, doubling up to 30 s."""
        backoff = 0.0
        while True:
            self._wake = anyio.Event()
            try:
                result = await self.run_once()
            except errors.Unavailable as exc:
                _log.warning("payload offload pass failed", extra={"error": str(exc)})
                result = None
            if result is None or (result.failed and not result.moved):
                backoff = min(MAX_RETRY_SECONDS, max(self._poll, backoff * 2))
                await anyio.sleep(backoff)
                continue
            backoff = 0.0
            if result.moved >= self._batch:
                continue
            with anyio.move_on_after(self._poll):
                await self._wake.wait()
                await anyio.sleep(self._gather)
