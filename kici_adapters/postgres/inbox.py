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

import functools
import gzip
import hashlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, overload

import anyio
import anyio.to_thread
import psycopg
from psycopg.types.json import Jsonb

from kici_adapters.lanes import Lanes
from kici_adapters.postgres import checks as pg_checks
from kici_adapters.postgres import eventlog, notify
from kici_adapters.postgres.pool import Connection, Database, connect, translate_errors
from kici_adapters.postgres.queries import q
from kici_core import errors
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.keys import event_log_payload_key
from kici_core.ports import (
    MAX_CRASHES,
    AcceptResult,
    BlobStore,
    Delivery,
    DeliveryOutcome,
    EventLogEntry,
    EventLogQuery,
    InboxItem,
    NewJob,
    NewRun,
)

DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024
"""``KICI_EVENT_LOG_MAX_PAYLOAD_BYTES`` default: larger bodies are recorded without a stored object."""
MAX_BATCH = 512
MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Most gzipped payload bytes in one commit (a batch always takes at least one delivery)."""
COMMIT_LANES = 1
"""Batches that may be committing at once. One measured best (bench/ingest_db.py): while a commit runs, the next
batch fills up, so larger batches cost less per delivery than overlapping smaller ones."""
GZIP_LEVEL = 6
_GZIP_INLINE_MAX = 256 * 1024
"""Bodies up to this size are compressed on the event loop; larger ones in a worker thread."""
_ORG_ID_MAX = 16
_PREFETCH_MAX = 4096
"""Most claimed bodies kept for ``payload`` (they are dropped when read, completed or failed)."""
_log = logging.getLogger("kici.inbox")


# ------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptRow:
    """One event_log row to claim, with its gzipped body (None when the payload is omitted)."""

    org_id: str
    delivery_id: str
    routing_key: str
    event: str
    action: str | None
    source: str
    provider: str
    repo_identifier: str | None
    ref: str | None
    payload_key: str | None
    payload_omitted_reason: str | None
    payload_size_bytes: int
    payload_hash: str
    received_at: datetime
    body: bytes | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.org_id, self.delivery_id)


_COLUMNS = (
    "org_id",
    "delivery_id",
    "routing_key",
    "event",
    "action",
    "source",
    "provider",
    "repo_identifier",
    "ref",
    "payload_key",
    "payload_omitted_reason",
    "payload_size_bytes",
    "payload_hash",
    "received_at",
    "body",
)


def _batch_params(rows: Sequence[AcceptRow]) -> dict[str, list[Any]]:
    params: dict[str, list[Any]] = {name: [getattr(r, name) for r in rows] for name in _COLUMNS}
    params["payload_omitted"] = [r.payload_omitted_reason is not None for r in rows]
    return params


def _row_params(row: AcceptRow) -> dict[str, Any]:
    params: dict[str, Any] = {name: getattr(row, name) for name in _COLUMNS}
    params["payload_omitted"] = row.payload_omitted_reason is not None
    return params


async def execute_accept_batch(conn: Connection, rows: Sequence[AcceptRow], *, url: str) -> set[tuple[str, str]]:
    """Claim, queue and store ``rows`` (keys must be distinct) on an autocommit connection; returns the keys that
    were new. The batch is one statement, so it is its own transaction: one round trip, committed on return.

    Raises ``StorageUnavailable``/``Conflict`` (translated as :mod:`pool` does); other driver errors mean the
    database rejected a row.
    """
    with translate_errors(url):
        if len(rows) == 1:
            cur = await conn.execute(q("accept_one"), _row_params(rows[0]))
        else:
            cur = await conn.execute(q("accept_batch"), _batch_params(rows))
        return {(r["org_id"], r["delivery_id"]) for r in await cur.fetchall()}


async def insert_accept_rows(db: Database, rows: Sequence[AcceptRow]) -> set[tuple[str, str]]:
    """:func:`execute_accept_batch` on a pooled connection (switched to autocommit for the statement)."""
    async with db.connection() as conn:
        await conn.set_autocommit(True)
        try:
            return await execute_accept_batch(conn, rows, url=db.url)
        finally:
            # A broken connection cannot be switched back; the pool discards it anyway.
            with suppress(psycopg.Error):
                await conn.set_autocommit(False)


class LaneConnections:
    """Dedicated autocommit connections for the group-commit lanes (at most one per lane is ever in use).

    Outside the pool, so a batch costs exactly one round trip: no checkout check, no ``BEGIN``/``COMMIT``. A
    connection idle for longer than ``check_after`` seconds is checked with an empty query before use (and
    replaced when dead), so a server restart costs no acknowledged delivery; a broken one is dropped.
    ``aclose()`` closes them; a store dropped without it closes them when collected.
    """

    def __init__(self, url: str, *, check_after: float = 2.0, connect_timeout: int = 5) -> None:
        self._url = url
        self._check_after = check_after
        self._connect_timeout = connect_timeout
        self._idle: list[tuple[Connection, float]] = []
        self._open: set[Connection] = set()
        self._finalizer = weakref.finalize(self, _finish_all, self._open)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A ready autocommit connection, returned to the idle list afterwards unless it broke."""
        conn = await self._get()
        try:
            yield conn
        finally:
            if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await self._discard(conn)
            else:
                self._idle.append((conn, time.monotonic()))

    async def warm(self, count: int) -> int:
        """Open connections until ``count`` are idle, so a first burst does not pay for connecting; returns how
        many were opened. Raises ``StorageUnavailable`` when the database cannot be reached."""
        opened = 0
        with translate_errors(self._url):
            while len(self._idle) < count:
                conn = await connect(self._url, autocommit=True, connect_timeout=self._connect_timeout)
                self._open.add(conn)
                self._idle.append((conn, time.monotonic()))
                opened += 1
        return opened

    async def _get(self) -> Connection:
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since <= self._check_after:
                return conn
            try:
                await conn.execute("")
                return conn
            except psycopg.Error:
                await self._discard(conn)
        conn = await connect(self._url, autocommit=True, connect_timeout=self._connect_timeout)
        self._open.add(conn)
        return conn

    async def _discard(self, conn: Connection) -> None:
        self._open.discard(conn)
        with suppress(psycopg.Error):
            await conn.close()

    async def aclose(self) -> None:
        """Close every connection."""
        self._idle.clear()
        for conn in list(self._open):
            await self._discard(conn)


def _finish_all(conns: set[Connection]) -> None:
    for conn in conns:
        conn.pgconn.finish()  # synchronous close: no event loop needed
    conns.clear()


async def gzip_body(body: bytes) -> bytes:
    """``body`` gzipped; large bodies are compressed in a worker thread so the event loop keeps serving."""
    if len(body) <= _GZIP_INLINE_MAX:
        return gzip.compress(body, compresslevel=GZIP_LEVEL)
    return await anyio.to_thread.run_sync(functools.partial(gzip.compress, body, compresslevel=GZIP_LEVEL))


# ------------------------------------------------------------------------------------------ group commit
CommitResult = tuple[set[tuple[str, str]], dict[tuple[str, str], Exception]]
"""What one commit reports: the keys it claimed, and the keys whose row the database rejected."""


@dataclass(eq=False, slots=True)
class _Waiter:
    row: AcceptRow
    wake: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False
    duplicate: bool | None = None
    error: BaseException | None = None


class GroupCommit:
    """Shares one commit among concurrent acceptances.

    A caller that finds fewer than ``lanes`` commits in flight becomes a leader: it takes what is queued (up to
    ``max_batch`` deliveries and ``max_batch_bytes`` of bodies) and commits it as one statement. Callers
    arriving while every lane is busy queue up; when a commit ends, the oldest queued caller not already chosen
    is woken to lead the next batch on that lane, so no caller ever works for others longer than one commit
    and every lane always has exactly one leader. Each caller learns its own duplicate flag; when a commit
    fails, every caller in that batch gets ``StorageUnavailable``. Nobody returns before the commit holding its
    row has finished, and the commit itself is shielded from cancellation so a cancelled caller cannot strand
    the others.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[AcceptRow]], Awaitable[CommitResult]],
        *,
        max_batch: int = MAX_BATCH,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        lanes: int = COMMIT_LANES,
    ) -> None:
        self._commit = commit
        self._max = max(1, max_batch)
        self._max_bytes = max_batch_bytes
        self._lanes: Lanes[_Waiter] = Lanes(lanes)
        self.batches = 0
        """Commits issued (for tests and the benchmark)."""

    async def submit(self, row: AcceptRow) -> bool:
        """Commit ``row`` (with whatever else is pending); True when it was a duplicate."""
        waiter = _Waiter(row=row)
        await self._lanes.join(waiter, self._lead, lambda w: w.duplicate is not None or w.error is not None)
        if waiter.error is not None:
            raise errors.StorageUnavailable(f"delivery not recorded: {waiter.error}") from waiter.error
        assert waiter.duplicate is not None
        return waiter.duplicate

    async def _lead(self, me: _Waiter) -> None:
        with anyio.CancelScope(shield=True):
            batch = self._take(me)
            try:
                claimed, failed = await self._commit(_first_per_key(w.row for w in batch))
                self.batches += 1
                seen: set[tuple[str, str]] = set()
                for w in batch:
                    if w.row.key in failed:
                        w.error = failed[w.row.key]
                    else:
                        w.duplicate = w.row.key not in claimed or w.row.key in seen
                    seen.add(w.row.key)
            except Exception as exc:
                for w in batch:
                    w.error = exc
            finally:
                self._lanes.end(batch)

    def _take(self, me: _Waiter) -> list[_Waiter]:
        """``me`` plus the oldest queued callers that fit one batch, leaving callers chosen to lead other lanes."""
        batch = [me]
        size = len(me.row.body or b"")
        for w in self._lanes.queue:
            if len(batch) >= self._max:
                break
            if w is me or w.lead:
                continue
            size += len(w.row.body or b"")
            if size > self._max_bytes:
                break
            batch.append(w)
        taken = {id(w) for w in batch}
        self._lanes.queue = [w for w in self._lanes.queue if id(w) not in taken]
        return batch


def _first_per_key(rows: Iterable[AcceptRow]) -> list[AcceptRow]:
    out: dict[tuple[str, str], AcceptRow] = {}
    for r in rows:
        out.setdefault(r.key, r)
    return list(out.values())


# ------------------------------------------------------------------------------------------ batched completion
COMPLETE_BATCH = 32
"""Most delivery completions sharing one transaction."""
COMPLETE_LANES = 2
"""Completion transactions that may be in flight at once (one connection each)."""

CompleteOutcome = Mapping[str, Any] | None | BaseException
"""What one completion in a batch got: its result row (None: the delivery does not exist) or its own error."""


@dataclass(eq=False, slots=True)
class _Completion:
    params: dict[str, Any]
    wake: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False
    done: bool = False
    row: Mapping[str, Any] | None = None
    error: BaseException | None = None


class CompletionGroup:
    """Shares one transaction (one round trip, one commit) among concurrent delivery completions.

    The same leader scheme as :class:`GroupCommit`: a caller finding a free lane takes what is queued (up to
    ``max_batch`` completions) and runs it; callers arriving while every lane is busy queue up and the oldest
    leads the next batch. Each completion is still its own ``complete_delivery`` statement with its own result;
    the batch only shares the commit. ``run`` reports an outcome per completion, so a statement the database
    rejects fails only its own caller. Nobody returns before the commit holding its completion has finished,
    and the batch is shielded from cancellation so a cancelled caller cannot strand the others.
    """

    def __init__(
        self,
        run: Callable[[Sequence[dict[str, Any]]], Awaitable[list[CompleteOutcome]]],
        *,
        max_batch: int = COMPLETE_BATCH,
        lanes: int = COMPLETE_LANES,
    ) -> None:
        self._run = run
        self._max = max(1, max_batch)
        self._lanes: Lanes[_Completion] = Lanes(lanes)
        self.batches = 0
        """Transactions issued (for tests and the benchmark)."""

    async def submit(self, params: dict[str, Any]) -> Mapping[str, Any] | None:
        """Run ``complete_delivery`` with ``params`` (with whatever else is pending); returns its row."""
        me = _Completion(params=params)
        await self._lanes.join(me, self._lead, lambda w: w.done)
        if me.error is not None:
            raise me.error
        return me.row

    async def _lead(self, me: _Completion) -> None:
        with anyio.CancelScope(shield=True):
            queue = self._lanes.queue
            batch = [me, *[w for w in queue if w is not me and not w.lead][: self._max - 1]]
            taken = {id(w) for w in batch}
            self._lanes.queue = [w for w in queue if id(w) not in taken]
            try:
                outcomes = await self._run([w.params for w in batch])
                self.batches += 1
                for w, got in zip(batch, outcomes, strict=True):
                    if isinstance(got, BaseException):
                        w.error = got
                    else:
                        w.row = got
            except Exception as exc:
                for w in batch:
                    w.error = exc
            finally:
                for w in batch:
                    w.done = True
                self._lanes.end(batch)


# ------------------------------------------------------------------------------------------ complete
def split_matchers(matchers: Sequence[JSONObject]) -> tuple[list[str], list[JSONObject]]:
    """Exact label values and regex matchers, in order (``{kind: exact, value}`` / ``{kind: regex, ...}``)."""
    exact: list[str] = []
    patterns: list[JSONObject] = []
    for m in matchers:
        if m.get("kind") == "exact" and isinstance(m.get("value"), str):
            exact.append(str(m["value"]))
        else:
            patterns.append(dict(m))
    return exact, patterns


def _job_row(run: NewRun, job: NewJob) -> dict[str, JSONValue]:
    exact, _ = split_matchers(job.runs_on)
    return {
        "job_id": job.job_id,
        "run_id": run.run_id,
        "job_name": job.name,
        "base_name": job.base_name,
        "status": job.status,
        "matrix_values": job.matrix_values,
        "runs_on": list(job.runs_on),
        "exclude_labels": list(job.exclude_labels),
        "required_labels": list(exact),
        "job_config": job.job_config,
        "error_message": job.reason,
        "runnable": job.runnable,
    }


def _queue_row(run: NewRun, job: NewJob) -> dict[str, JSONValue]:
    labels, patterns = split_matchers(job.runs_on)
    ex_labels, ex_patterns = split_matchers(job.exclude_labels)
    return {
        "job_id": job.job_id,
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "job_name": job.name,
        "runs_on_labels": list(labels),
        "runs_on_patterns": list(patterns),
        "exclude_labels": list(ex_labels),
        "exclude_patterns": list(ex_patterns),
        "required_labels": list(labels),
        "job_config": job.job_config,
        "repo_url": run.repo_url,
        "ref": run.ref,
        "sha": run.sha,
        "provider": run.provider,
        "routing_key": run.routing_key,
    }


def _run_reason(run: NewRun) -> str | None:
    """Why a run ended at planning (it never started): the reasons of its jobs."""
    reasons = [f"{j.name}: {j.reason}" for j in run.jobs if j.reason]
    return "; ".join(reasons)[:2000] if reasons else None


def _complete_params(
    item: InboxItem, outcome: DeliveryOutcome, runs: Sequence[NewRun], *, forward: bool = False
) -> dict[str, Any]:
    """Parameters of ``complete_delivery``: the run graph as JSON row sets, in order, and the triggering event
    (every run of one delivery has the same; it is sent once)."""
    run_rows: list[JSONValue] = []
    job_rows: list[JSONValue] = []
    need_rows: list[JSONValue] = []
    queue_rows: list[JSONValue] = []
    event = next((run.event for run in runs if run.event is not None), None)
    check_rows_: list[JSONValue] = []
    for run in runs:
        check_rows_ += pg_checks.check_rows(
            provider=run.provider,
            run_id=run.run_id,
            routing_key=run.routing_key,
            repo=run.repo_identifier,
            sha=run.sha,
            workflow_name=run.workflow_name,
            run_status=run.status,
            run_reason=_run_reason(run) if run.status != "pending" else None,
            jobs=[(j.job_id, j.name, j.status, j.reason) for j in run.jobs],
        )
        run_rows.append(
            {
                "ord": len(run_rows),
                "run_id": run.run_id,
                "workflow_name": run.workflow_name,
                "status": run.status,
                "provider": run.provider,
                "routing_key": run.routing_key,
                "repo_identifier": run.repo_identifier,
                "repo_url": run.repo_url,
                "ref": run.ref,
                "sha": run.sha,
                "trigger_decision": run.trigger_decision,
                "job_count": len(run.jobs),
                "trigger_event": item.event,
            }
        )
        for job in run.jobs:
            job_rows.append({"ord": len(job_rows), **_job_row(run, job)})
            need_rows += [
                {"run_id": run.run_id, "job_name": job.name, "upstream_name": e.upstream_name, "run_on": list(e.run_on)}
                for e in job.needs
            ]
            if job.runnable:
                queue_rows.append({"ord": len(queue_rows), **_queue_row(run, job)})
    return {
        "org_id": item.org_id,
        "delivery_id": item.delivery_id,
        "runs": Jsonb(run_rows),
        "jobs": Jsonb(job_rows),
        "needs": Jsonb(need_rows),
        "queue": Jsonb(queue_rows),
        "checks": Jsonb(check_rows_),
        "status": outcome.status,
        "event": None if event is None else Jsonb(event),
        "forward": forward,
        "jobs_channel": notify.JOBS,
        "matched_count": outcome.matched_count,
        "repo_identifier": outcome.repo_identifier,
        "ref": outcome.ref,
        "error_message": outcome.error_message,
        "decision_trace": None if outcome.decision_trace is None else Jsonb(outcome.decision_trace),
    }


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
        if len(self._prefetched) + len(rows) > _PREFETCH_MAX:
            self._prefetched.clear()  # items claimed and never finished (cancelled): read again if needed
        for r in rows:
            if r["payload_body"] is not None:
                self._prefetched[(r["org_id"], r["delivery_id"])] = bytes(r["payload_body"])
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
        params = _complete_params(item, outcome, runs, forward=self._forward)
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
