"""What the dispatcher asks its driver to do, and the settings it runs with.

Every effect is a frozen value. The driver executes them **in list order**: a ``MarkDispatched``
claim precedes its ``SendDispatch``; a ``Requeue`` precedes the ``MarkDispatched`` that places the
job again; ``SendRegisterAck`` follows the reclaim effects of that registration and precedes any
new dispatch to the agent.
"""

from __future__ import annotations

from dataclasses import dataclass

from kici_core import errors
from kici_core.states import JobStatus

__all__ = [
    "CLOSE_DISPATCH_ACK_TIMEOUT",
    "CLOSE_HEARTBEAT_TIMEOUT",
    "CLOSE_SUPERSEDED",
    "AckResolved",
    "CloseAgent",
    "DispatcherConfig",
    "Effect",
    "FailJob",
    "MarkDispatched",
    "MarkRecovering",
    "Reclaim",
    "Requeue",
    "SendCancel",
    "SendDispatch",
    "SendRegisterAck",
]

CLOSE_SUPERSEDED = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4004
CLOSE_DISPATCH_ACK_TIMEOUT = 4031

REASON_SUPERSEDED = "Superseded by a newer connection for this agentId"
REASON_ACK_TIMEOUT = "dispatch ack timeout"
REASON_HEARTBEAT_TIMEOUT = "Heartbeat timeout"
REASON_RECOVERY_EXPIRED = "Job failed: agent disconnected and did not reconnect within the recovery window"
REASON_QUEUE_EXPIRED = "Queue timeout expired (job was never dispatched to an agent)"
REASON_NEVER_STARTED = "No heartbeat -- dispatch never acknowledged"
REASON_NOT_ASSIGNED = "job is not assigned to this agent"
REASON_SCALER_AGENT_LOST = (
    "Job failed: scaler-managed agent disconnected mid-execution (ephemeral agents are destroyed on disconnect)"
)
CANCEL_NO_HEARTBEAT = "No heartbeat received"


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherConfig:
    """Timers and limits, in seconds (defaults from the spec).

    ``ack_timeout`` (``KICI_DISPATCH_ACK_TIMEOUT_MS`` / 1000, min 1 s); ``max_attempts``: deliveries
    per job before it fails; ``recovery_grace``: how long a disconnected agent's started jobs wait
    for it; ``stale_after``: job-heartbeat silence that ends a started job; ``agent_heartbeat_timeout``:
    connection-heartbeat silence that closes an agent (4004); ``ownership_grace``: how long a
    finished job's late messages are still accepted from its agent. ``busy_backoff`` /
    ``busy_backoff_max``: how long an agent that rejected a dispatch as ``busy`` is left alone when it
    does not report a free slot first (doubled for each further ``busy`` in a row, capped).
    """

    ack_timeout: float = 10.0
    max_attempts: int = 5
    recovery_grace: float = 120.0
    stale_after: float = 120.0
    agent_heartbeat_timeout: float = 180.0
    ownership_grace: float = 30.0
    completed_cap: int = 10_000
    busy_backoff: float = 2.0
    busy_backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.ack_timeout < 1.0:
            raise errors.ConfigError("dispatch ack timeout must be at least 1 s")
        if self.max_attempts < 1:
            raise errors.ConfigError("max dispatch attempts must be at least 1")
        for name in (
            "recovery_grace",
            "stale_after",
            "agent_heartbeat_timeout",
            "ownership_grace",
            "busy_backoff",
            "busy_backoff_max",
        ):
            if getattr(self, name) <= 0:
                raise errors.ConfigError(f"{name} must be positive")
        if self.completed_cap < 1:
            raise errors.ConfigError("completed_cap must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkDispatched:
    """Claim the queue row for ``agent_id``: guarded ``pending → dispatched``, store ``agent_id``
    and the ack deadline. If the guard fails (another process took the row), skip the following
    ``SendDispatch`` and call ``Dispatcher.job_withdrawn``."""

    job_id: str
    agent_id: str
    ack_deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDispatch:
    """Build and send ``job.dispatch`` for ``job_id`` on the agent's socket; count it as dispatched."""

    agent_id: str
    job_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRegisterAck:
    """Send ``register.ack`` on this connection (after the reclaim effects before it)."""

    agent_id: str
    connection_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AckResolved:
    """The dispatch was acknowledged (``job.ack`` or ``running``): clear the row's ack columns."""

    job_id: str
    agent_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendCancel:
    """Send ``job.cancel`` (best effort: a closed socket just drops it)."""

    agent_id: str
    job_id: str
    reason: str
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseAgent:
    """Close this connection with ``code`` / ``reason``. The dispatcher has already forgotten it,
    so the later ``agent_gone`` for this connection is a no-op."""

    agent_id: str
    connection_id: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Requeue:
    """Return the row to the queue: guarded ``dispatched → pending`` with ``dispatch_attempts =
    attempts``, ack columns cleared. ``context`` says why (for logs)."""

    job_id: str
    attempts: int
    context: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailJob:
    """End a job the agent will not finish: the row becomes ``failed`` (``expired`` when it was
    still ``pending``) and the job ``status`` (``failed``, ``timed_out_stale`` or ``cancelled``)
    with ``reason`` as its error, guarded against terminal rows. Then check run completion."""

    job_id: str
    status: JobStatus
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkRecovering:
    """The agent holding a started job disconnected: row ``dispatched → recovering`` with
    ``recovery_agent_id = agent_id`` and ``recovery_deadline = deadline``."""

    job_id: str
    agent_id: str
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Reclaim:
    """The agent reconnected still running the job: row ``recovering → dispatched`` (recovery and
    ack columns cleared), job status ``running``."""

    job_id: str
    agent_id: str


Effect = (
    MarkDispatched
    | SendDispatch
    | SendRegisterAck
    | AckResolved
    | SendCancel
    | CloseAgent
    | Requeue
    | FailJob
    | MarkRecovering
    | Reclaim
)
