"""Deliveries and their event-log entries: the records :class:`kici_core.ports.DeliveryInbox` and
:class:`kici_core.ports.EventLog` exchange, the delivery statuses and the poison-pill rule.

Timestamps are timezone-aware ``datetime`` values in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from kici_core.jsontypes import JSONValue

DeliverySource = Literal["relay", "direct", "internal"]
"""Where a delivery came from: the Platform relay, a direct webhook, or the orchestrator itself (a schedule
firing, a manual run)."""


DeliveryStatus = Literal["received", "processed", "duplicate", "lockfile_missing", "lockfile_corrupt", "failed"]


TERMINAL_DELIVERY_STATUSES: frozenset[str] = frozenset({"processed", "lockfile_missing", "lockfile_corrupt", "failed"})


MAX_CRASHES = 3
"""Processing attempts of one delivery that may crash or time out before it is parked ``failed`` (poison pill)."""


def crash_reason(crashes: int, last_error: str | None) -> str:
    """The ``error_message`` of a delivery parked by the poison-pill rule."""
    tail = f"; last error: {last_error}" if last_error else ""
    return f"processing crashed or timed out {crashes} times; parked (replay it once the cause is fixed){tail}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A verified webhook delivery, about to be accepted durably."""

    org_id: str
    delivery_id: str
    routing_key: str
    event: str
    action: str | None
    source: DeliverySource
    provider: str  # "github" | "generic" | "local"
    body: bytes  # the payload bytes to store (JSON text)
    received_at: datetime
    repo_identifier: str | None = None
    ref: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptResult:
    duplicate: bool
    """True when ``(org_id, delivery_id)`` was already claimed; nothing was written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxItem:
    """An accepted delivery claimed for processing under a lease."""

    org_id: str
    delivery_id: str
    routing_key: str
    event: str
    action: str | None
    source: DeliverySource
    provider: str
    payload_key: str | None
    received_at: datetime
    attempts: int  # processing attempts including this one


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryOutcome:
    """How processing ended; recorded on the event_log row."""

    status: DeliveryStatus
    matched_count: int = 0
    repo_identifier: str | None = None
    ref: str | None = None
    error_message: str | None = None
    decision_trace: JSONValue = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventLogEntry:
    org_id: str
    delivery_id: str
    routing_key: str
    event: str
    action: str | None
    source: DeliverySource
    provider: str
    repo_identifier: str | None
    ref: str | None
    payload_key: str | None
    payload_omitted: bool
    payload_omitted_reason: str | None
    payload_size_bytes: int
    payload_hash: str
    matched_count: int
    status: DeliveryStatus
    run_id: str | None
    error_message: str | None
    received_at: datetime
    decision_trace: JSONValue = None
    attempts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EventLogQuery:
    org_id: str | None = None
    routing_key: str | None = None
    event: str | None = None
    action: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    delivery_id_contains: str | None = None
    delivery_id: str | None = None  # exact: the same delivery id in every org that holds it
    limit: int = 50
    offset: int = 0
