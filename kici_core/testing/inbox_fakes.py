"""In-memory delivery inbox and event log, :class:`FakeDeliveryInbox` (re-exported by
:mod:`kici_core.testing.fakes`)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import overload

from kici_core import errors
from kici_core.delivery_records import (
    MAX_CRASHES,
    TERMINAL_DELIVERY_STATUSES,
    AcceptResult,
    Delivery,
    DeliveryOutcome,
    EventLogEntry,
    EventLogQuery,
    InboxItem,
    crash_reason,
)
from kici_core.keys import event_log_payload_key
from kici_core.run_records import NewJob, NewRun
from kici_core.testing.clock import FakeClock
from kici_core.testing.storage_fakes import FakeBlobStore

DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024


@dataclasses.dataclass(slots=True)
class _InboxRow:
    item: InboxItem
    done: bool = False
    locked_until: datetime | None = None
    locked_by: str | None = None
    available_at: datetime | None = None
    crashes: int = 0
    last_error: str | None = None


@dataclasses.dataclass(slots=True)
class FakeRun:
    run: NewRun
    org_id: str
    delivery_id: str
    status: str = "pending"


class FakeDeliveryInbox:
    """Inbox + event log in memory. ``runs`` and ``queue`` show what ``complete`` created.

    Like the PostgreSQL store, ``accept`` keeps the gzipped body with the entry (``pending_payloads``, the
    database copy) and ``offload()`` moves bodies to ``blobs`` under their ``payload_key``, keeping any whose
    write fails for the next pass. With ``offload_on_accept`` (the default) every accept is followed by an
    offload pass, as in a running orchestrator whose offloader is woken by each acceptance; set it False to
    drive offloading by hand. ``fail_accepts`` makes ``accept`` raise ``StorageUnavailable`` (database down).
    """

    def __init__(
        self,
        blobs: FakeBlobStore,
        clock: FakeClock,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        offload_on_accept: bool = True,
    ) -> None:
        self.blobs = blobs
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes
        self.offload_on_accept = offload_on_accept
        self.fail_accepts = False
        self.pending_payloads: dict[tuple[str, str], bytes] = {}
        self.entries: dict[tuple[str, str], EventLogEntry] = {}
        self.rows: dict[tuple[str, str], _InboxRow] = {}
        self.runs: dict[str, FakeRun] = {}
        self.runs_by_delivery: dict[tuple[str, str, str], str] = {}
        self.queue: list[NewJob] = []
        self.notifications = 0

    async def accept(self, delivery: Delivery) -> AcceptResult:
        if self.fail_accepts:
            raise errors.StorageUnavailable("database unavailable")
        key = (delivery.org_id, delivery.delivery_id)
        if key in self.entries:
            return AcceptResult(duplicate=True)
        payload_key: str | None = event_log_payload_key(delivery.org_id, delivery.delivery_id)
        omitted: str | None = None
        if len(delivery.body) > self.max_payload_bytes:
            payload_key, omitted = None, "size_exceeded"
        else:
            self.pending_payloads[key] = gzip.compress(delivery.body)
        self.entries[key] = EventLogEntry(
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
            payload_omitted=omitted is not None,
            payload_omitted_reason=omitted,
            payload_size_bytes=len(delivery.body),
            payload_hash=hashlib.sha256(delivery.body).hexdigest(),
            matched_count=0,
            status="received",
            run_id=None,
            error_message=None,
            received_at=delivery.received_at,
        )
        self.rows[key] = _InboxRow(
            item=InboxItem(
                org_id=delivery.org_id,
                delivery_id=delivery.delivery_id,
                routing_key=delivery.routing_key,
                event=delivery.event,
                action=delivery.action,
                source=delivery.source,
                provider=delivery.provider,
                payload_key=payload_key,
                received_at=delivery.received_at,
                attempts=0,
            )
        )
        if self.offload_on_accept and key in self.pending_payloads:
            await self.offload()
        return AcceptResult(duplicate=False)

    async def offload(self, limit: int = 100) -> tuple[int, int]:
        """Move up to ``limit`` pending bodies to ``blobs``, oldest first; returns ``(moved, failed)``. A body
        whose write fails stays pending."""
        moved = failed = 0
        for key in list(self.pending_payloads)[:limit]:
            entry = self.entries[key]
            assert entry.payload_key is not None
            try:
                await self.blobs.put(entry.payload_key, self.pending_payloads[key])
            except errors.KiciError:
                failed += 1
                continue
            del self.pending_payloads[key]
            moved += 1
        return moved, failed

    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[InboxItem]:
        now = self.clock.now()
        out: list[InboxItem] = []
        for key, row in sorted(self.rows.items(), key=lambda kv: kv[1].item.received_at):
            if len(out) >= limit:
                break
            if row.done or (row.locked_until is not None and row.locked_until > now):
                continue
            if row.available_at is not None and row.available_at > now:
                continue
            if row.locked_until is not None:  # an expired lease: that attempt crashed or timed out
                row.crashes += 1
                row.locked_until, row.locked_by = None, None
            if row.crashes >= MAX_CRASHES:
                row.done = True
                self.entries[key] = dataclasses.replace(
                    self.entries[key], status="failed", error_message=crash_reason(row.crashes, row.last_error)
                )
                continue
            row.item = dataclasses.replace(row.item, attempts=row.item.attempts + 1)
            row.locked_until = now + timedelta(seconds=lease_seconds)
            row.locked_by = worker_id
            self.entries[key] = dataclasses.replace(self.entries[key], attempts=row.item.attempts)
            out.append(row.item)
        return out

    async def release_leases(self, worker_id: str) -> int:
        released = 0
        for row in self.rows.values():
            if not row.done and row.locked_until is not None and row.locked_by == worker_id:
                row.locked_until, row.locked_by = None, None
                row.crashes += 1
                released += 1
        return released

    @overload
    async def payload(self, item: InboxItem) -> bytes: ...

    @overload
    async def payload(self, org_id: str, delivery_id: str, /) -> bytes | None: ...

    async def payload(self, item: InboxItem | str, delivery_id: str | None = None) -> bytes | None:
        """``payload(item)`` (DeliveryInbox: ``NotFound`` when not stored) or ``payload(org_id, delivery_id)``
        (EventLog: None when not stored); the pending copy first, else the object."""
        if isinstance(item, str):
            assert delivery_id is not None
            return await self._read_payload((item, delivery_id))
        if item.payload_key is None:
            raise errors.NotFound("payload was not stored")
        body = await self._read_payload((item.org_id, item.delivery_id))
        if body is None:
            raise errors.NotFound("payload was not stored")
        return body

    async def _read_payload(self, key: tuple[str, str]) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None or entry.payload_key is None:
            return None
        data = self.pending_payloads.get(key)
        if data is None:
            data = await self.blobs.get(entry.payload_key)
        return gzip.decompress(data)

    async def complete(self, item: InboxItem, outcome: DeliveryOutcome, runs: Sequence[NewRun]) -> list[str]:
        key = (item.org_id, item.delivery_id)
        run_ids: list[str] = [rid for (o, d, _w), rid in self.runs_by_delivery.items() if (o, d) == key]
        for run in runs:
            rkey = (item.org_id, item.delivery_id, run.workflow_name)
            if rkey in self.runs_by_delivery:
                continue
            self.runs_by_delivery[rkey] = run.run_id
            self.runs[run.run_id] = FakeRun(run=run, org_id=item.org_id, delivery_id=item.delivery_id)
            self.queue.extend(job for job in run.jobs if job.runnable)
            run_ids.append(run.run_id)
        entry = self.entries[key]
        if entry.status not in TERMINAL_DELIVERY_STATUSES or entry.status == "failed":
            self.entries[key] = dataclasses.replace(
                entry,
                status=outcome.status,
                matched_count=outcome.matched_count,
                repo_identifier=outcome.repo_identifier,
                ref=outcome.ref,
                error_message=outcome.error_message,
                decision_trace=outcome.decision_trace,
                run_id=run_ids[0] if run_ids else None,
            )
        self.rows[key].done = True
        self.rows[key].locked_until = None
        self.notifications += 1
        return run_ids

    async def fail(self, item: InboxItem, error: str, *, retry_after: float | None, crashed: bool = False) -> None:
        key = (item.org_id, item.delivery_id)
        row = self.rows[key]
        row.locked_until = None
        row.last_error = error
        row.crashes += int(crashed)
        if retry_after is None:
            row.done = True
            self.entries[key] = dataclasses.replace(self.entries[key], status="failed", error_message=error)
        else:
            row.available_at = self.clock.now() + timedelta(seconds=retry_after)
            self.entries[key] = dataclasses.replace(self.entries[key], error_message=error)

    async def replay(self, org_id: str, delivery_id: str) -> bool:
        row = self.rows.get((org_id, delivery_id))
        if row is None:
            return False
        row.done = False
        row.locked_until = None
        row.available_at = None
        row.crashes = 0
        row.item = dataclasses.replace(row.item, attempts=0)
        key = (org_id, delivery_id)
        self.entries[key] = dataclasses.replace(self.entries[key], attempts=0)
        return True

    async def depth(self) -> int:
        return sum(1 for r in self.rows.values() if not r.done)

    # -- EventLog (read side) --------------------------------------------------------------------------
    async def list(self, query: EventLogQuery) -> tuple[list[EventLogEntry], int]:
        def keep(e: EventLogEntry) -> bool:
            return (
                (query.org_id is None or e.org_id == query.org_id)
                and (query.routing_key is None or e.routing_key == query.routing_key)
                and (query.event is None or e.event == query.event)
                and (query.action is None or e.action == query.action)
                and (query.status is None or e.status == query.status)
                and (query.since is None or e.received_at >= query.since)
                and (query.until is None or e.received_at < query.until)
                and (query.delivery_id_contains is None or query.delivery_id_contains in e.delivery_id)
                and (query.delivery_id is None or e.delivery_id == query.delivery_id)
            )

        hits = sorted((e for e in self.entries.values() if keep(e)), key=lambda e: e.received_at, reverse=True)
        return hits[query.offset : query.offset + query.limit], len(hits)

    async def get(self, org_id: str | None, delivery_id: str) -> EventLogEntry | None:
        hits = [e for (o, d), e in self.entries.items() if d == delivery_id and (org_id is None or o == org_id)]
        return max(hits, key=lambda e: e.received_at) if hits else None
