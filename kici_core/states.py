"""Run, job, step and dispatch-row statuses, and which transitions between them are allowed.

The enum values are the exact wire and database strings. Transitions are data
(:data:`TRANSITIONS`): for each ``(old, new)`` pair, the set of actors that may cause it. Every
status write should go through :func:`check_transition`, whose answer also tells the caller whether
the write is a real change or an idempotent repeat.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from kici_core import errors

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Actor",
    "DispatchStatus",
    "JobStatus",
    "Kind",
    "RunStatus",
    "StepStatus",
    "check_transition",
    "is_terminal",
    "run_conclusion",
]


class RunStatus(enum.StrEnum):
    """``execution_runs.status`` (upstream ``ExecutionRunStatus``)."""

    pending = "pending"
    running = "running"
    success = "success"
    failed = "failed"
    cancelled = "cancelled"
    cancelling = "cancelling"
    held = "held"


class JobStatus(enum.StrEnum):
    """``execution_jobs.status`` and ``job.status.state`` (upstream ``ExecutionJobStatus``)."""

    pending = "pending"
    queued = "queued"
    running = "running"
    recovering = "recovering"
    cancelling = "cancelling"
    success = "success"
    failed = "failed"
    cancelled = "cancelled"
    skipped = "skipped"
    timed_out_stale = "timed_out_stale"
    drift_dropped = "drift_dropped"


class StepStatus(enum.StrEnum):
    """``step.status.state`` (upstream ``ExecutionStepStatus``)."""

    running = "running"
    success = "success"
    failed = "failed"
    skipped = "skipped"
    pending = "pending"
    cancelled = "cancelled"


class DispatchStatus(enum.StrEnum):
    """``dispatch_queue.status``: one row per runnable job."""

    pending = "pending"
    dispatched = "dispatched"
    completed = "completed"
    failed = "failed"
    expired = "expired"
    recovering = "recovering"


class Kind(enum.StrEnum):
    """Which entity a transition is about."""

    run = "run"
    job = "job"
    step = "step"
    dispatch = "dispatch"


class Actor(enum.StrEnum):
    """Who causes a transition."""

    pipeline = "pipeline"  # run creation, needs scheduling, run conclusion
    agent = "agent"  # job.status / step.status from the owning agent
    dispatcher = "dispatcher"  # queue, claim, requeue, attempt budget, recovery window
    cancel = "cancel"  # run cancel (API, timeout, concurrency supersede)
    stale = "stale"  # stale job / stale dispatch detection, queue expiry
    restart = "restart"  # orchestrator startup recovery


_TERMINAL_MEMBERS: Mapping[Kind, frozenset[enum.StrEnum]] = {
    Kind.run: frozenset({RunStatus.success, RunStatus.failed, RunStatus.cancelled}),
    Kind.job: frozenset(
        {
            JobStatus.success,
            JobStatus.failed,
            JobStatus.cancelled,
            JobStatus.skipped,
            JobStatus.timed_out_stale,
            JobStatus.drift_dropped,
        }
    ),
    Kind.step: frozenset({StepStatus.success, StepStatus.failed, StepStatus.skipped, StepStatus.cancelled}),
    Kind.dispatch: frozenset({DispatchStatus.completed, DispatchStatus.failed, DispatchStatus.expired}),
}
TERMINAL: Mapping[Kind, frozenset[str]] = {k: frozenset(map(str, v)) for k, v in _TERMINAL_MEMBERS.items()}

_A = Actor
_J = JobStatus
_R = RunStatus
_S = StepStatus
_D = DispatchStatus


def _edges(olds: Iterable[str], news: Iterable[str], *actors: Actor) -> dict[tuple[str, str], frozenset[Actor]]:
    return {(str(o), str(n)): frozenset(actors) for o in olds for n in news}


def _merge(*parts: dict[tuple[str, str], frozenset[Actor]]) -> dict[tuple[str, str], frozenset[Actor]]:
    out: dict[tuple[str, str], frozenset[Actor]] = {}
    for part in parts:
        for edge, actors in part.items():
            out[edge] = out.get(edge, frozenset()) | actors
    return out


_WAITING = (_J.pending, _J.queued)

TRANSITIONS: Mapping[Kind, Mapping[tuple[str, str], frozenset[Actor]]] = {
    Kind.job: _merge(
        _edges([_J.pending], [_J.queued], _A.dispatcher),
        _edges([_J.queued], [_J.pending], _A.dispatcher),
        _edges(_WAITING, [_J.running], _A.agent, _A.dispatcher),  # dispatcher: reclaim on reconnect
        _edges(_WAITING, [_J.skipped], _A.pipeline),
        _edges(_WAITING, [_J.cancelled], _A.cancel),
        _edges(_WAITING, [_J.failed], _A.pipeline, _A.dispatcher),
        _edges(_WAITING, [_J.timed_out_stale], _A.stale),
        _edges([_J.running], [_J.success, _J.failed, _J.cancelled, _J.cancelling], _A.agent),
        _edges([_J.running], [_J.timed_out_stale], _A.stale),
        _edges([_J.running], [_J.failed], _A.dispatcher, _A.restart),
        _edges([_J.running], [_J.recovering], _A.dispatcher),
        _edges([_J.recovering], [_J.running], _A.dispatcher),
        _edges([_J.recovering], [_J.failed], _A.dispatcher, _A.restart),
        _edges([_J.recovering], [_J.success, _J.failed, _J.cancelled], _A.agent),
        _edges([_J.cancelling], [_J.cancelled, _J.failed], _A.agent),
        _edges([_J.cancelling], [_J.timed_out_stale], _A.stale),
        _edges([_J.cancelling], [_J.failed], _A.dispatcher),
        _edges([_J.cancelling], [_J.recovering], _A.dispatcher),
        _edges(
            [_J.pending, _J.queued, _J.running, _J.recovering, _J.cancelling],
            [_J.drift_dropped],
            _A.agent,
            _A.pipeline,
        ),
    ),
    Kind.run: _merge(
        _edges([_R.pending], [_R.running], _A.pipeline),
        _edges([_R.pending, _R.running], [_R.cancelling], _A.cancel),
        _edges(
            [_R.pending, _R.running, _R.cancelling, _R.held],
            [_R.success, _R.failed, _R.cancelled],
            _A.pipeline,
        ),
        _edges([_R.pending, _R.running, _R.held], [_R.cancelled], _A.cancel),
        _edges([_R.pending], [_R.held], _A.pipeline),
        _edges([_R.held], [_R.pending], _A.pipeline),
    ),
    Kind.step: _merge(
        _edges([_S.pending], [_S.running], _A.agent),
        _edges([_S.pending, _S.running], [_S.success, _S.failed, _S.skipped, _S.cancelled], _A.agent),
        _edges([_S.pending, _S.running], [_S.cancelled], _A.stale, _A.dispatcher, _A.cancel),
    ),
    Kind.dispatch: _merge(
        _edges([_D.pending], [_D.dispatched], _A.dispatcher),
        _edges([_D.pending], [_D.expired], _A.stale, _A.cancel),
        _edges([_D.pending], [_D.failed], _A.pipeline, _A.cancel),
        _edges([_D.dispatched], [_D.completed], _A.agent),
        _edges([_D.dispatched], [_D.pending], _A.dispatcher),
        _edges([_D.dispatched], [_D.failed], _A.dispatcher, _A.stale, _A.pipeline),
        _edges([_D.dispatched], [_D.recovering], _A.dispatcher, _A.restart),
        _edges([_D.recovering], [_D.dispatched], _A.dispatcher),
        _edges([_D.recovering], [_D.failed], _A.dispatcher, _A.restart),
        _edges([_D.recovering], [_D.completed], _A.agent),
    ),
}

# Non-terminal states an entity may repeat (e.g. several `running` messages from a build job).
_REPEATABLE: Mapping[Kind, frozenset[str]] = {
    Kind.run: frozenset({_R.running, _R.cancelling}),
    Kind.job: frozenset({_J.running, _J.cancelling}),
    Kind.step: frozenset({_S.running}),
    Kind.dispatch: frozenset(),
}


def is_terminal(kind: Kind | str, status: str) -> bool:
    """True when ``status`` is terminal for entities of ``kind``.

    Raises:
        InvalidInput: unknown kind or status.
    """
    k = _kind(kind)
    _status(k, status)
    return status in TERMINAL[k]


def _kind(kind: Kind | str) -> Kind:
    try:
        return Kind(kind)
    except ValueError:
        raise errors.InvalidInput(f"unknown entity kind {kind!r}") from None


_ENUMS: Mapping[Kind, type[enum.StrEnum]] = {
    Kind.run: RunStatus,
    Kind.job: JobStatus,
    Kind.step: StepStatus,
    Kind.dispatch: DispatchStatus,
}


def _status(kind: Kind, status: str) -> str:
    try:
        return str(_ENUMS[kind](status))
    except ValueError:
        raise errors.InvalidInput(f"unknown {kind} status {status!r}") from None


def check_transition(kind: Kind | str, old: str, new: str, actor: Actor | None = None) -> bool:
    """Validate a status change of a run, job, step or dispatch row.

    Returns ``True`` when the write should be applied, ``False`` when it is an idempotent repeat
    (same terminal status again, or a repeatable state such as a second ``running``).

    Raises:
        Conflict: the entity is terminal and ``new`` differs, or the edge is not allowed, or
            ``actor`` is given and may not cause this edge.
        InvalidInput: unknown kind or status value.
    """
    k = _kind(kind)
    old_s, new_s = _status(k, old), _status(k, new)
    if old_s == new_s and (old_s in TERMINAL[k] or old_s in _REPEATABLE[k]):
        return False
    if old_s in TERMINAL[k]:
        raise errors.Conflict(f"{k} is already {old_s}; cannot become {new_s}")
    allowed = TRANSITIONS[k].get((old_s, new_s))
    if allowed is None:
        raise errors.Conflict(f"{k} cannot go from {old_s} to {new_s}")
    if actor is not None and actor not in allowed:
        raise errors.Conflict(f"{actor} may not move a {k} from {old_s} to {new_s}")
    return True


def run_conclusion(job_statuses: Iterable[str]) -> RunStatus | None:
    """The final run status once every job is terminal, else ``None``.

    ``failed`` if any job is ``failed``, ``timed_out_stale`` or ``drift_dropped``; otherwise
    ``cancelled`` if any is ``cancelled``; otherwise ``success`` (``skipped`` counts as success).
    A run without jobs has no conclusion (``None``).

    Raises:
        InvalidInput: an unknown job status.
    """
    statuses = [JobStatus(_status(Kind.job, s)) for s in job_statuses]
    if not statuses or any(s not in TERMINAL[Kind.job] for s in statuses):
        return None
    if any(s in (_J.failed, _J.timed_out_stale, _J.drift_dropped) for s in statuses):
        return RunStatus.failed
    if _J.cancelled in statuses:
        return RunStatus.cancelled
    return RunStatus.success
