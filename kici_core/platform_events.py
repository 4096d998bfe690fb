"""What the Platform must hear, as domain events (platform spec §2.3: buffered messages).

State changes record these events in the Platform outbox in the same transaction as the change; the outbox
stores the event (its :attr:`KIND` and :meth:`record`), not a wire frame. One module,
``kici_adapters.platform.messages``, turns stored events into Platform frames when they are sent, so every
rule of the wire format (field names, nullability, bounds, timestamps, message ids) lives in one place.

Records are JSON objects with the dataclass field names; absent optional fields are left out.
:func:`from_record` reads one back (unknown fields are ignored, so records written by an older release still
read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from kici_core.jsontypes import JSONObject, JSONValue


def _plain(value: object) -> JSONValue:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class _Event:
    __slots__ = ()
    KIND: ClassVar[str]

    def record(self) -> JSONObject:
        """The JSON the outbox stores (``None`` fields left out)."""
        out: dict[str, JSONValue] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _plain(value)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatusChanged(_Event):
    """A run was created (``pending``) or changed status (``execution.status``)."""

    KIND: ClassVar[str] = "run_status"
    run_id: str
    workflow_name: str
    status: str
    started_at_ms: int
    job_count: int | None = None
    repo_identifier: str | None = None
    repo_provider: str | None = None
    sha: str | None = None
    ref: str | None = None
    trigger_event: str | None = None
    completed_at_ms: int | None = None
    """Terminal runs only, as ``duration_ms``, ``log_bytes`` and ``failure_reason``."""
    duration_ms: int | None = None
    log_bytes: int | None = None
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatusChanged(_Event):
    """A job changed status (``job.status.forward``)."""

    KIND: ClassVar[str] = "job_status"
    run_id: str
    job_id: str
    job_name: str
    status: str
    runs_on_labels: tuple[str, ...] = ()
    agent_id: str | None = None
    orchestrator_id: str | None = None
    matrix_values: JSONObject | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    duration_ms: int | None = None
    error_message: str | None = None
    log_bytes: int | None = None
    """Terminal jobs only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStatusChanged(_Event):
    """An agent reported a step's state (``step.status.forward``)."""

    KIND: ClassVar[str] = "step_status"
    run_id: str
    job_id: str
    job_name: str
    step_index: int
    step_name: str
    state: str
    data: JSONObject | None = None
    """The agent's step data without the fields lifted out below."""
    secrets_accessed: JSONValue = None
    concurrency_kind: JSONValue = None
    group_id: JSONValue = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLines(_Event):
    """A batch of log lines of a job (``log.chunk``); ``step_index`` -1 is the job-level bucket."""

    KIND: ClassVar[str] = "log_lines"
    run_id: str
    job_id: str
    step_index: int
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryDecided(_Event):
    """A delivery was processed: its trigger decisions (``execution.event`` ``started``). ``trace_id`` is a fresh
    id, not a run id (upstream's convention)."""

    KIND: ClassVar[str] = "delivery_decided"
    trace_id: str
    delivery_id: str
    webhook_event: str
    action: str | None = None
    repo_identifier: str | None = None
    ref: str | None = None
    matched_workflows: int = 0
    total_workflows: int = 0
    decisions: tuple[JSONValue, ...] = ()


PlatformEvent = RunStatusChanged | JobStatusChanged | StepStatusChanged | LogLines | DeliveryDecided

KINDS: dict[str, type[PlatformEvent]] = {
    cls.KIND: cls for cls in (RunStatusChanged, JobStatusChanged, StepStatusChanged, LogLines, DeliveryDecided)
}


def from_record(kind: str, record: Mapping[str, JSONValue]) -> PlatformEvent | None:
    """The event stored as ``(kind, record)``; None when ``kind`` is not an event kind or the record lacks a
    required field."""
    cls = KINDS.get(kind)
    if cls is None:
        return None
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name not in record:
            continue
        value = record[f.name]
        values[f.name] = tuple(value) if isinstance(value, list) and f.name in _TUPLES else value
    try:
        return cls(**values)  # type: ignore[arg-type]
    except TypeError:
        return None


_TUPLES = frozenset({"runs_on_labels", "lines", "decisions"})
