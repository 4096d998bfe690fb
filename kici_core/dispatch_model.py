"""Internal bookkeeping records of :mod:`kici_core.dispatch` (one per job, one per agent)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kici_core import routing

__all__ = ["AgentEntry", "AgentView", "JobEntry", "Phase"]


class Phase(enum.Enum):
    """Where a job stands in this process."""

    QUEUED = "queued"
    AWAITING_ACK = "awaiting_ack"
    ACKED = "acked"
    RUNNING = "running"
    RECOVERING = "recovering"


@dataclass(slots=True, kw_only=True)
class JobEntry:
    """A job this process knows: queued here, or assigned to / recovering for one of its agents."""

    job_id: str
    run_id: str
    selector: routing.JobSelector | None
    order: tuple[float, int]
    attempts: int = 0
    expires_at: float | None = None
    phase: Phase = Phase.QUEUED
    agent_id: str | None = None
    ack_deadline: float | None = None
    heartbeat_at: float | None = None
    recovery_deadline: float | None = None
    cancel_reason: str | None = None


@dataclass(slots=True, kw_only=True)
class AgentEntry:
    """A connected agent and the jobs it holds."""

    agent_id: str
    connection_id: str
    labels: routing.AgentLabels
    max_concurrency: int
    idle_since: float
    heartbeat_at: float
    accepting: bool = True
    jobs: set[str] = field(default_factory=set)
    held_until: float | None = None
    """Set after a ``busy`` reject: the agent gets no dispatch until it reports a free slot or this time."""
    busy_streak: int = 0
    """``busy`` rejects in a row since the agent last accepted a job (drives the hold's backoff)."""
    scaler_managed: bool = False
    """Started by the auto-scaler: takes one job in its life (``jobs_taken``), only ``bound_job_id`` if set."""
    bound_job_id: str | None = None
    jobs_taken: int = 0


@dataclass(frozen=True, slots=True)
class AgentLoad:
    """What the cluster's agent mirror records of one connected agent: its connection, how many jobs it
    holds, whether it takes work."""

    connection_id: str
    active_jobs: int
    accepting: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentView:
    """Read-only snapshot of one connected agent."""

    agent_id: str
    connection_id: str
    labels: routing.AgentLabels
    max_concurrency: int
    active_jobs: tuple[str, ...]
    accepting: bool
    held_until: float | None = None
    idle_since: float = 0.0
    scaler_managed: bool = False
    bound_job_id: str | None = None
    jobs_taken: int = 0
