"""Dispatch rules that the dispatch driver and the adapters apply outside the dispatcher's state machine.

- **Sweeps.** A row whose deadline passed while no live process tracked it is settled by the sweep: an
  unacknowledged dispatch is requeued, or failed once its deliveries are spent (the same rule the dispatcher
  applies to the jobs it tracks); an expired recovery window fails the job; a queue expiry times it out. A
  sweep acts only ``SWEEP_GRACE_S`` past a deadline, so the process that owns a row acts first.
- **Ownership violations.** Messages about a job an agent does not own are dropped; ``VIOLATION_LIMIT`` of
  them within ``VIOLATION_WINDOW_S`` close the agent's socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kici_core import dispatch_effects as fx
from kici_core.states import JobStatus

__all__ = [
    "SWEEP_GRACE_S",
    "VIOLATION_LIMIT",
    "VIOLATION_WINDOW_S",
    "SweepFail",
    "SweepRequeue",
    "ack_overdue",
    "attempts_exhausted",
    "exhausted_reason",
    "guard_of",
    "queue_expired",
    "record_violation",
    "recovery_overdue",
    "violation_close_reason",
]

SWEEP_GRACE_S = 5.0
"""How long past a row's deadline the sweep waits before it acts (the owning process acts at the deadline)."""
VIOLATION_LIMIT = 5
"""Ownership violations within :data:`VIOLATION_WINDOW_S` that close an agent's socket."""
VIOLATION_WINDOW_S = 60.0


def attempts_exhausted(attempts: int, max_attempts: int) -> bool:
    """Whether a job delivered ``attempts`` times may not be delivered again."""
    return attempts >= max_attempts


def exhausted_reason(attempts: int, context: str) -> str:
    """The failure reason of a job whose deliveries are spent."""
    return f"Job failed: re-dispatch attempts exhausted after {attempts} attempts ({context})"


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepRequeue:
    """Put the row back in the queue with ``attempts`` deliveries spent."""

    job_id: str
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepFail:
    """End the job with ``status`` and ``reason``, if its queue row is still ``guard``."""

    job_id: str
    status: JobStatus
    reason: str
    guard: str


def ack_overdue(job_id: str, attempts: int, *, max_attempts: int) -> SweepRequeue | SweepFail:
    """What the sweep does with a dispatch never acknowledged (``attempts`` deliveries before this one)."""
    spent = attempts + 1
    if attempts_exhausted(spent, max_attempts):
        return SweepFail(
            job_id=job_id,
            status=JobStatus.failed,
            guard="dispatched",
            reason=exhausted_reason(spent, "dispatch ack deadline sweep"),
        )
    return SweepRequeue(job_id=job_id, attempts=spent)


def recovery_overdue(job_id: str) -> SweepFail:
    """What the sweep does with a recovery window that expired."""
    return SweepFail(job_id=job_id, status=JobStatus.failed, reason=fx.REASON_RECOVERY_EXPIRED, guard="recovering")


def queue_expired(job_id: str) -> SweepFail:
    """What the sweep does with a pending row past its queue expiry."""
    return SweepFail(job_id=job_id, status=JobStatus.timed_out_stale, reason=fx.REASON_QUEUE_EXPIRED, guard="pending")


def guard_of(reason: str) -> str | None:
    """The queue-row status a :class:`~kici_core.dispatch_effects.FailJob` with ``reason`` requires (a reclaim
    or a dispatch that beat the deadline wins), or None when any row status may end."""
    return {fx.REASON_RECOVERY_EXPIRED: "recovering", fx.REASON_QUEUE_EXPIRED: "pending"}.get(reason)


def record_violation(history: Sequence[float], now: float) -> tuple[list[float], bool]:
    """Add an ownership violation at ``now`` (monotonic seconds) to ``history``; returns the violations still
    inside the window and whether they reach the limit (close the socket)."""
    kept = [t for t in history if now - t < VIOLATION_WINDOW_S] + [now]
    return kept, len(kept) >= VIOLATION_LIMIT


def violation_close_reason(job_id: str) -> str:
    """The close reason of an agent closed for ownership violations."""
    return f"Ownership violations: job {job_id} is not assigned to this agent"
