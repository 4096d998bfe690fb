"""The read side of ``event_log`` (the ``EventLog`` port), shared by ``PgDeliveryInbox``."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from typing import Any, cast

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.queries import q
from kici_core import errors
from kici_core.delivery_records import DeliverySource, DeliveryStatus, EventLogEntry, EventLogQuery
from kici_core.jsontypes import JSONValue
from kici_core.ports import BlobStore


def row_to_entry(row: Mapping[str, Any]) -> EventLogEntry:
    """An ``event_log`` row (optionally joined with its inbox ``attempts``) as a domain record."""
    run_id = row["run_id"]
    return EventLogEntry(
        org_id=row["org_id"],
        delivery_id=row["delivery_id"],
        routing_key=row["routing_key"],
        event=row["event"],
        action=row["action"],
        source=cast(DeliverySource, row["source"]),
        provider=row["provider"],
        repo_identifier=row["repo_identifier"],
        ref=row["ref"],
        payload_key=row["payload_key"],
        payload_omitted=row["payload_omitted"],
        payload_omitted_reason=row["payload_omitted_reason"],
        payload_size_bytes=row["payload_size_bytes"],
        payload_hash=row["payload_hash"],
        matched_count=row["matched_count"],
        status=cast(DeliveryStatus, row["status"]),
        run_id=None if run_id is None else str(run_id),
        error_message=row["error_message"],
        received_at=row["received_at"],
        decision_trace=cast(JSONValue, row["decision_trace"]),
        attempts=int(row.get("attempts") or 0),
    )


def _filters(query: EventLogQuery) -> dict[str, Any]:
    return {
        "org_id": query.org_id,
        "routing_key": query.routing_key,
        "event": query.event,
        "action": query.action,
        "status": query.status,
        "since": query.since,
        "until": query.until,
        "contains": query.delivery_id_contains,
        "delivery_id": query.delivery_id,
    }


async def list_entries(db: Database, query: EventLogQuery) -> tuple[list[EventLogEntry], int]:
    """One page of matching entries, newest first, and the total matching count (one snapshot)."""
    params = _filters(query)
    params["limit"] = max(0, query.limit)
    params["offset"] = max(0, query.offset)
    async with db.transaction() as conn:
        await conn.execute(q("read_only_snapshot"))
        cur = await conn.execute(q("event_log_page"), params)
        rows = await cur.fetchall()
        cur = await conn.execute(q("event_log_count"), params)
        count = await cur.fetchone()
    return [row_to_entry(r) for r in rows], int(count["n"]) if count else 0


async def get_entry(db: Database, org_id: str | None, delivery_id: str) -> EventLogEntry | None:
    """One entry; with ``org_id`` None the newest entry with that delivery id."""
    async with db.connection() as conn:
        cur = await conn.execute(q("event_log_get"), {"org_id": org_id, "delivery_id": delivery_id})
        row = await cur.fetchone()
    return None if row is None else row_to_entry(row)


async def readable(db: Database) -> bool:
    """Readiness: True once the database answers a read of ``event_log`` (reachable, and the schema is there).

    Raises:
        StorageUnavailable: the database cannot be reached.
    """
    async with db.connection() as conn:
        await conn.execute(q("event_log_probe"))
    return True


async def read_payload(db: Database, blobs: BlobStore, org_id: str, delivery_id: str) -> bytes | None:
    """A delivery's body, un-gzipped: the ``delivery_payloads`` copy while the offloader has not moved it, else
    the object at ``payload_key``. None when the delivery is unknown or its payload was not stored.

    The offloader deletes a row only after the object is durably written, so a reader that misses the row
    always finds the object.

    Raises:
        NotFound: the payload was stored but its object is gone (e.g. removed by retention).
        StorageUnavailable: the database or object storage did not answer.
        InvalidInput: the stored bytes are not gzip.
    """
    async with db.connection() as conn:
        cur = await conn.execute(q("payload_get"), {"org_id": org_id, "delivery_id": delivery_id})
        row = await cur.fetchone()
    if row is None:
        return None
    if row["body"] is not None:
        data = bytes(row["body"])
    elif row["payload_omitted"] or row["payload_key"] is None:
        return None
    else:
        data = await blobs.get(row["payload_key"])
    return gunzip_payload(data, delivery_id)


def gunzip_payload(data: bytes, delivery_id: str) -> bytes:
    """A stored (gzipped) body, un-gzipped. Raises ``InvalidInput`` when the bytes are not gzip."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise errors.InvalidInput(f"stored payload of {delivery_id} is not gzip: {exc}") from exc
