"""Batching on the accept and completion paths of :class:`kici_adapters.postgres.inbox.PgDeliveryInbox`: the accept
rows and their one-statement batch insert, the lane connections, the group commit of concurrent accepts and the
shared transactions of concurrent completions."""

from __future__ import annotations

import functools
import gzip
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
import psycopg

from kici_adapters.lanes import Lanes
from kici_adapters.postgres.pool import Connection, Database, connect, translate_errors
from kici_adapters.postgres.queries import q
from kici_core import errors

MAX_BATCH = 512
MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Most gzipped payload bytes in one commit (a batch always takes at least one delivery)."""
COMMIT_LANES = 1
"""Batches that may be committing at once. One measured best (bench/ingest_db.py): while a commit runs, the next
batch fills up, so larger batches cost less per delivery than overlapping smaller ones."""
GZIP_LEVEL = 6
_GZIP_INLINE_MAX = 256 * 1024
"""Bodies up to this size are compressed on the event loop; larger ones in a worker thread."""
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
