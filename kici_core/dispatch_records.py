"""The records the dispatch driver exchanges with the run store and the dispatch queue (:mod:`kici_core.ports`).

Times are epoch seconds (the dispatcher's clock). Ids are strings (UUID text where the database uses ``uuid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kici_core.jsontypes import JSONObject, JSONValue

__all__ = [
    "CancelJob",
    "CancelRun",
    "ConnectedAgent",
    "DispatchNotice",
    "DispatchRow",
    "FinishResult",
    "HeldJob",
    "JobsQueued",
    "Overdue",
    "Proceed",
    "QueuedRow",
    "RecoveringRow",
    "StartResult",
    "UpstreamResult",
    "upstream_outputs",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedRow:
    """A pending queue row as the dispatcher needs it."""

    job_id: str
    run_id: str
    created_at: float
    expires_at: float | None
    attempts: int
    runs_on: tuple[JSONObject, ...]
    exclude_labels: tuple[JSONObject, ...]
    seq: int = 0
    """The row's position in the queue (increasing in enqueue order)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRow:
    """Everything ``job.dispatch`` is built from."""

    job_id: str
    run_id: str
    workflow_name: str
    job_name: str
    base_name: str
    job_config: JSONObject
    repo_url: str
    ref: str
    sha: str
    provider: str | None
    routing_key: str | None
    repo_identifier: str | None
    request_id: str | None
    upstream_outputs: JSONObject
    upstream_statuses: dict[str, str]
    event: JSONObject | None = None
    """The run's triggering event (``jobConfig.event``), when it was stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveringRow:
    """A row waiting for its agent to reconnect (``recovering``) until ``deadline``."""

    job_id: str
    run_id: str
    agent_id: str
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Overdue:
    """Rows past a deadline that no live process handles, as ``(job_id, dispatch attempts)``: ``ack``
    (dispatched, never acknowledged, not started), ``recovery`` (recovering) and ``expired`` (pending past its
    queue expiry)."""

    ack: tuple[tuple[str, int], ...] = ()
    recovery: tuple[tuple[str, int], ...] = ()
    expired: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectedAgent:
    """An agent connected to some orchestrator process, as recorded in the shared agent table."""

    agent_id: str
    labels: tuple[str, ...]
    mandatory_labels: tuple[str, ...]
    instance: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartResult:
    """What a ``running`` report changed."""

    changed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishResult:
    """What ending a job changed: ``changed`` False for a repeat (no-op)."""

    changed: bool
    run_id: str | None = None
    queued: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    run_status: str | None = None
    cancel: tuple[tuple[str, str], ...] = ()
    """``(job_id, reason)`` of jobs on agents to send ``job.cancel`` (a matrix's failFast)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldJob:
    """A job of a run being cancelled that an agent holds (queue row ``dispatched`` or ``recovering``)."""

    job_id: str
    agent_id: str | None
    recovery_agent_id: str | None
    status: str


# ------------------------------------------------------------------------------ notices between processes
@dataclass(frozen=True, slots=True)
class JobsQueued:
    """Rows were queued (or requeued): the job or run ids that transaction named, or none (read everything new)."""

    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRun:
    """Cancel the run's jobs held by this process's agents."""

    run_id: str
    force: bool
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelJob:
    """Cancel one job (a matrix's failFast) if an agent of this process holds it."""

    job_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Proceed:
    """A job waiting for a concurrency group got its slot: tell its agent (``job.concurrency.ack proceed``)."""

    job_id: str
    run_id: str
    agent_id: str = field(default="")


DispatchNotice = JobsQueued | CancelRun | CancelJob | Proceed
"""What one orchestrator process tells the others about the dispatch queue."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamResult:
    """One direct upstream of a job being dispatched (a matrix upstream has one per child)."""

    upstream_name: str
    base_name: str
    status: str
    outputs: JSONValue
    matrix_values: JSONValue


def upstream_outputs(results: Sequence[UpstreamResult]) -> JSONObject:
    """``upstreamJobOutputs`` keyed by base name; a matrix upstream gives ``{byMatrix, merged}`` (§7.4)."""
    out: dict[str, JSONValue] = {}
    by_base: dict[str, list[UpstreamResult]] = {}
    for result in results:
        by_base.setdefault(result.base_name, []).append(result)
    for base, members in by_base.items():
        if len(members) == 1 and not members[0].matrix_values:
            outputs = members[0].outputs
            out[base] = outputs if isinstance(outputs, dict) else {}
            continue
        by_matrix: dict[str, JSONValue] = {}
        merged: dict[str, JSONValue] = {}
        for member in sorted(members, key=lambda r: r.upstream_name):
            name = member.upstream_name
            suffix = name[len(base) + 2 : -1] if name.startswith(base + " (") and name.endswith(")") else name
            outputs = member.outputs if isinstance(member.outputs, dict) else {}
            by_matrix[suffix] = outputs
            merged.update(outputs)
        out[base] = {"byMatrix": by_matrix, "merged": merged}
    return out
