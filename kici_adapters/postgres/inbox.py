"""``PgDeliveryInbox``: durable acceptance, the processing inbox and the event log over PostgreSQL.

Acceptance (ARCHITECTURE §1, decision 2): one statement claims ``(org_id, delivery_id)`` in ``event_log``
(``ON CONFLICT DO NOTHING``), queues the claimed row in ``delivery_inbox`` and stores its gzipped body in
``delivery_payloads``, so a delivery is durable, payload included, once that statement commits. Nothing touches
object storage on this path: :class:`kici_adapters.postgres.offload.PayloadOffloader` moves bodies there later,
under the ``payload_key`` already recorded, and readers look in the database first, then in object storage.
Concurrent ``accept`` calls share commits (group commit, see :class:`GroupCommit`): the commit, not the
statement, is what costs, so one commit for many deliveries is the throughput lever.

Processing (§2): ``claim`` leases pending rows with ``FOR UPDATE SKIP LOCKED``; ``complete`` writes runs, jobs,
needs edges, dispatch-queue rows, the event_log outcome and the inbox row's completion in one transaction
and then ``NOTIFY kici_jobs``. Time comes from the database clock (``now()``), so every process agrees.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, overload

import psycopg

from kici_adapters.postgres import eventlog
from kici_adapters.postgres.inbox_batches import (
    COMMIT_LANES,
    COMPLETE_BATCH,
    COMPLETE_LANES,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    AcceptRow,
    CommitResult,
    CompleteOutcome,
    CompletionGroup,
    GroupCommit,
    LaneConnections,
    execute_accept_batch,
    gzip_body,
    insert_accept_rows,
)
from kici_adapters.postgres.inbox_rows import (
    complete_params,
    split_matchers,
)
from kici_adapters.postgres.pool import Database, translate_errors
from kici_adapters.postgres.queries import q
from kici_core import errors
from kici_core.delivery_records import (
    MAX_CRASHES,
    AcceptResult,
    Delivery,
    DeliveryOutcome,
    EventLogEntry,
    EventLogQuery,
    InboxItem,
)
from kici_core.keys import event_log_payload_key
from kici_core.ports import BlobStore
from kici_core.run_records import NewRun

DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024
"""``KICI_EVENT_LOG_MAX_PAYLOAD_BYTES`` default: larger bodies are recorded without a stored object."""
_ORG_ID_MAX = 16
_PREFETCH_MAX = 4096
"""Most claimed bodies kept for ``payload`` (they are dropped when read, completed or failed)."""
_log = logging.getLogger("kici.inbox")

__all__ = [
    "COMMIT_LANES",
    "COMPLETE_LANES",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "AcceptRow",
    "CommitResult",
    "GroupCommit",
    "LaneConnections",
    "PgDeliveryInbox",
    "split_matchers",
]


# ------------------------------------------------------------------------------------------ the store
class PgDeliveryInbox:
    """The ``DeliveryInbox`` and ``EventLog`` ports over PostgreSQL and a BlobStore.

    Args:
        db: the connection pool.
        blobs: where the offloader puts gzipped bodies; read when the database copy is gone.
        max_payload_bytes: bodies larger than this are recorded with ``payload_omitted`` (``size_exceeded``).
        group_commit: share commits among concurrent ``accept`` calls (default on).
        max_batch: most deliveries in one commit.
        max_batch_bytes: most gzipped body bytes in one commit.
        commit_lanes: batches committing at once.
        on_accepted: called (on the event loop) after a new delivery committed, e.g. ``PayloadOffloader.wake``.
        forward: platform and hybrid modes: completing a delivery also writes each new run's
            ``run_status`` event (``pending``) to the Platform outbox, in the same commit.
        complete_batch: most concurrent completions sharing one transaction (1: each commits alone).
        complete_lanes: completion transactions in flight at once.
    """

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        group_commit: bool = True,
        max_batch: int = MAX_BATCH,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        commit_lanes: int = COMMIT_LANES,
        on_accepted: Callable[[], None] | None = None,
        forward: bool = False,
        complete_batch: int = COMPLETE_BATCH,
        complete_lanes: int = COMPLETE_LANES,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._forward = forward
        self._max_payload = max_payload_bytes
        self._on_accepted = on_accepted
        self._lanes = LaneConnections(db.url)
        self._group: GroupCommit | None = (
            GroupCommit(self._commit_rows, max_batch=max_batch, max_batch_bytes=max_batch_bytes, lanes=commit_lanes)
            if group_commit
            else None
        )
        self._completions: CompletionGroup | None = (
            CompletionGroup(self._complete_rows, max_batch=complete_batch, lanes=complete_lanes)
            if complete_batch > 1
            else None
        )
        self._prefetched: dict[tuple[str, str], bytes] = {}
        self._offloaded: dict[tuple[str, str], str] = {}  # claimed after the offloader moved the body: its key

    @property
    def group(self) -> GroupCommit | None:
        """The group-commit batcher, or None when disabled."""
        return self._group

    async def aclose(self) -> None:
        """Close the group-commit lanes' connections (the pool is the caller's)."""
        await self._lanes.aclose()

    async def _commit_rows(self, rows: Sequence[AcceptRow]) -> CommitResult:
        async with self._lanes.connection() as conn:
            try:
                return await execute_accept_batch(conn, rows, url=self._db.url), {}
            except (errors.StorageUnavailable, errors.Conflict):
                raise
            except (psycopg.Error, errors.InvalidInput):  # InvalidInput: a value the database cannot hold
                if len(rows) == 1:
                    raise
            # A row the database rejects must not sink its batch-mates: commit them one by one, so a row that
            # still fails makes only its own caller fail.
            _log.warning("accept batch rejected; retrying its %d rows one by one", len(rows))
            claimed: set[tuple[str, str]] = set()
            failed: dict[tuple[str, str], Exception] = {}
            for row in rows:
                try:
                    claimed |= await execute_accept_batch(conn, [row], url=self._db.url)
                except (psycopg.Error, errors.InvalidInput) as exc:
                    failed[row.key] = exc
            return claimed, failed

    async def accept(self, delivery: Delivery) -> AcceptResult:
        """Claim the delivery, queue it and store its gzipped body, in one commit shared with concurrent callers.

        No object storage on this path: the body stays in ``delivery_payloads`` until the offloader moves it
        to ``payload_key``. Bodies over ``max_payload_bytes`` are recorded without a payload (``size_exceeded``).

        Raises:
            InvalidInput: the org id or source cannot be stored.
            StorageUnavailable: the database did not commit the row (nothing may be acknowledged).
        """
        if len(delivery.org_id) > _ORG_ID_MAX or delivery.source not in ("relay", "direct", "internal"):
            raise errors.InvalidInput("org id longer than 16 characters or unknown delivery source")
        payload_key: str | None = None
        omitted: str | None = None
        body: bytes | None = None
        if len(delivery.body) > self._max_payload:
            _log.warning(
                "event-log payload over the size limit; not stored",
                extra={"deliveryId": delivery.delivery_id, "bytes": len(delivery.body)},
            )
            omitted = "size_exceeded"
        else:
            payload_key = event_log_payload_key(delivery.org_id, delivery.delivery_id)
            body = await gzip_body(delivery.body)
        row = AcceptRow(
            org_id=delivery.org_id,
            delivery_id=delivery.delivery_id,
            routing_key=delivery.routing_key,
            event=delivery.event,
            action=delivery.action,
            source=delivery.source,
            provider=delivery.provider,
            repo_identifier=delivery.repo_identifier,
            ref=delivery.ref,
            payload_key=payload_key,
            payload_omitted_reason=omitted,
            payload_size_bytes=len(delivery.body),
            payload_hash=hashlib.sha256(delivery.body).hexdigest(),
            received_at=delivery.received_at,
            body=body,
        )
        if self._group is not None:
            duplicate = await self._group.submit(row)
        else:
            duplicate = row.key not in await insert_accept_rows(self._db, [row])  # StorageUnavailable propagates
        if not duplicate and body is not None and self._on_accepted is not None:
            self._on_accepted()
        return AcceptResult(duplicate=duplicate)

    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[InboxItem]:
        """Lease up to ``limit`` claimable rows (pending, available, lease free or expired), oldest first."""
        if limit <= 0:
            return []
        async with self._db.connection() as conn:
            # One statement, atomic on its own: without a transaction around it the claim costs one round trip
            # instead of three (BEGIN, the claim, COMMIT), on the path of every delivery.
            await conn.set_autocommit(True)
            try:
                cur = await conn.execute(
                    q("claim"),
                    {
                        "worker_id": worker_id,
                        "limit": limit,
                        "lease_seconds": float(lease_seconds),
                        "max_crashes": MAX_CRASHES,
                    },
                )
                rows = await cur.fetchall()
            finally:
                with suppress(psycopg.Error):  # a broken connection cannot be switched back (the pool drops it)
                    await conn.set_autocommit(False)
        if len(self._prefetched) + len(self._offloaded) + len(rows) > _PREFETCH_MAX:
            # items claimed and never finished (cancelled): read again if needed
            self._prefetched.clear()
            self._offloaded.clear()
        for r in rows:
            if r["payload_body"] is not None:
                self._prefetched[(r["org_id"], r["delivery_id"])] = bytes(r["payload_body"])
            elif r["payload_key"] is not None and not r["payload_omitted"]:
                # The offloader deletes a database copy only after its object is written: read the object
                # directly (during a backlog every body may have moved before its claim).
                self._offloaded[(r["org_id"], r["delivery_id"])] = r["payload_key"]
        return [_row_to_item(r) for r in rows]

    @overload
    async def payload(self, item: InboxItem) -> bytes: ...

    @overload
    async def payload(self, org_id: str, delivery_id: str, /) -> bytes | None: ...

    async def payload(self, item: InboxItem | str, delivery_id: str | None = None) -> bytes | None:
        """The stored body, un-gzipped: the database copy while there is one, else the object.

        This store plays both ports, so ``payload`` answers both calls: ``payload(item)`` (``DeliveryInbox``)
        raises ``NotFound`` when no payload was stored; ``payload(org_id, delivery_id)`` (``EventLog``) returns
        None then. Either raises ``NotFound`` when the object is missing and ``StorageUnavailable`` when a store
        does not answer.
        """
        if isinstance(item, str):
            assert delivery_id is not None
            return await eventlog.read_payload(self._db, self._blobs, item, delivery_id)
        if item.payload_key is None:
            raise errors.NotFound("payload was not stored")
        claimed = self._prefetched.pop((item.org_id, item.delivery_id), None)
        if claimed is not None:  # the body came with the claim (bodies never change once accepted)
            return eventlog.gunzip_payload(claimed, item.delivery_id)
        moved = self._offloaded.pop((item.org_id, item.delivery_id), None)
        if moved is not None:  # the claim saw the body gone from the database: its object exists
            with suppress(errors.NotFound):  # (else the full read below says why)
                return eventlog.gunzip_payload(await self._blobs.get(moved), item.delivery_id)
        body = await eventlog.read_payload(self._db, self._blobs, item.org_id, item.delivery_id)
        if body is None:
            raise errors.NotFound("payload was not stored")
        return body

    async def warm(self, connections: int) -> None:
        """Open ``connections`` lane connections ahead of the first acceptances and completions."""
        await self._lanes.warm(connections)

    async def complete(self, item: InboxItem, outcome: DeliveryOutcome, runs: Sequence[NewRun]) -> list[str]:
        """Create the runs (at most once per delivery and workflow), record the outcome, finish the inbox row and
        notify dispatchers, in one statement. Concurrent completions share one transaction (one round trip, one
        commit: see :class:`CompletionGroup`); each is atomic either way. Returns the delivery's run ids, first
        first."""
        self._prefetched.pop((item.org_id, item.delivery_id), None)
        self._offloaded.pop((item.org_id, item.delivery_id), None)
        params = complete_params(item, outcome, runs, forward=self._forward)
        if self._completions is not None:
            row = await self._completions.submit(params)
        else:
            with translate_errors(self._db.url):
                async with self._lanes.connection() as conn:
                    cur = await conn.execute(q("complete_delivery"), params)
                    row = await cur.fetchone()
        if row is None or row["entry_id"] is None:
            raise errors.NotFound(f"delivery {item.delivery_id} not found")
        if row["created"] < len(runs):  # some runs already existed, maybe committed after this statement began
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    q("runs_for_delivery"), {"org_id": item.org_id, "delivery_id": item.delivery_id}
                )
                return [str(r["run_id"]) for r in await cur.fetchall()]
        return [str(r) for r in row["run_ids"]]

    async def _complete_rows(self, batch: Sequence[dict[str, Any]]) -> list[CompleteOutcome]:
        """Run ``complete_delivery`` for each of ``batch`` in one transaction, pipelined. When the database
        rejects one statement the transaction is rolled back and each runs alone, so only that one fails."""
        url = self._db.url
        async with self._lanes.connection() as conn:
            if len(batch) > 1:
                try:
                    with translate_errors(url):
                        async with conn.transaction():
                            async with conn.pipeline():
                                cursors = [await conn.execute(q("complete_delivery"), p) for p in batch]
                            return [await cur.fetchone() for cur in cursors]
                except errors.StorageUnavailable:
                    if conn.broken or conn.closed:
                        raise  # the connection is gone: every completion of the batch is retried later
                except (errors.KiciError, psycopg.Error):
                    pass
                _log.info("completion batch rolled back; completing its %d deliveries one by one", len(batch))
            out: list[CompleteOutcome] = []
            for p in batch:
                try:
                    with translate_errors(url):
                        cur = await conn.execute(q("complete_delivery"), p)
                        out.append(await cur.fetchone())
                except errors.StorageUnavailable as exc:
                    if conn.broken or conn.closed:
                        raise
                    out.append(exc)
                except (errors.KiciError, psycopg.Error) as exc:
                    out.append(exc)
            return out

    async def fail(self, item: InboxItem, error: str, *, retry_after: float | None, crashed: bool = False) -> None:
        """Release the lease: retry after ``retry_after`` seconds (``crashed``: counting a crash), or park the
        delivery as ``failed``."""
        self._prefetched.pop((item.org_id, item.delivery_id), None)
        self._offloaded.pop((item.org_id, item.delivery_id), None)
        params: dict[str, Any] = {"org_id": item.org_id, "delivery_id": item.delivery_id, "error": error}
        async with self._db.connection() as conn:
            if retry_after is None:
                await conn.execute(q("inbox_park"), params)
            else:
                await conn.execute(
                    q("inbox_retry"), {**params, "retry_after": max(0.0, float(retry_after)), "crashed": int(crashed)}
                )

    async def replay(self, org_id: str, delivery_id: str) -> bool:
        """Put a stored delivery back in the inbox (available now, lease cleared, attempts reset)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("inbox_replay"), {"org_id": org_id, "delivery_id": delivery_id})
            return await cur.fetchone() is not None

    async def release_leases(self, worker_id: str) -> int:
        """Free the leases ``worker_id`` holds (see the port)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("release_leases"), {"worker_id": worker_id})
            return cur.rowcount

    async def depth(self) -> int:
        """Deliveries accepted and not yet finished (pending inbox rows, leased or not)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("inbox_depth"))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    # -- EventLog ------------------------------------------------------------------------------------
    async def ready(self) -> bool:
        """Readiness probe: the database answers a read of the event log (raises ``StorageUnavailable``)."""
        return await eventlog.readable(self._db)

    async def list(self, query: EventLogQuery) -> tuple[list[EventLogEntry], int]:
        """Entries newest first, and the total matching count."""
        return await eventlog.list_entries(self._db, query)

    async def get(self, org_id: str | None, delivery_id: str) -> EventLogEntry | None:
        """One entry; with ``org_id`` None the newest entry with that delivery id."""
        return await eventlog.get_entry(self._db, org_id, delivery_id)


def _row_to_item(row: Mapping[str, Any]) -> InboxItem:
    entry = eventlog.row_to_entry(row)
    return InboxItem(
        org_id=entry.org_id,
        delivery_id=entry.delivery_id,
        routing_key=entry.routing_key,
        event=entry.event,
        action=entry.action,
        source=entry.source,
        provider=entry.provider,
        payload_key=entry.payload_key,
        received_at=entry.received_at,
        attempts=int(row["attempts"]),
    )
