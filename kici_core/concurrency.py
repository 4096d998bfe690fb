"""Workflow concurrency groups (agent-protocol spec §7.6): what a ``job.concurrency.report`` gets.

A workflow's ``concurrency`` is ``{hasGroup, cancelInProgress (default true), max (default 1)}``; the agent
computes the group key when it starts a job and reports it. Slots are keyed by ``(group, routing key)`` and
held by runs (every job of a run that holds the group proceeds). :func:`decide` says, given the runs holding
the group, whether the reporting run proceeds (taking a slot, after superseding the holders when
``cancelInProgress``) or waits in line; :func:`promote` which waiters take the slots a finished run freed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kici_core.jsontypes import JSONValue

__all__ = ["Decision", "Promoted", "Settings", "decide", "promote", "queued_reason", "settings_of", "superseded_reason"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A workflow's ``concurrency``."""

    cancel_in_progress: bool = True
    max: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer to a report: ``proceed`` (after cancelling ``supersede``), ``wait``, or ``cancel`` (the group
    could not be evaluated; the agent fails the job with the reason)."""

    action: Literal["proceed", "wait", "cancel"]
    supersede: tuple[str, ...] = ()
    """Runs whose hold ends: their dispatched jobs are cancelled."""
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Promoted:
    """A waiting job whose run took a slot: its agent gets an unsolicited ``proceed``."""

    job_id: str
    run_id: str
    agent_id: str | None


def settings_of(value: JSONValue) -> Settings | None:
    """The workflow ``concurrency`` object, or None when the workflow declares no group."""
    if not isinstance(value, Mapping) or value.get("hasGroup") is not True:
        return None
    cancel = value.get("cancelInProgress")
    limit = value.get("max")
    return Settings(
        cancel_in_progress=cancel is not False,
        max=limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1 else 1,
    )


def queued_reason(group: str) -> str:
    return f"Queued in concurrency group '{group}'"


def superseded_reason(group: str) -> str:
    return f"Superseded by run in concurrency group '{group}'"


def decide(settings: Settings, *, group: str, run_id: str, holders: Sequence[str], waiting: Sequence[str]) -> Decision:
    """The decision for ``run_id`` reporting ``group``, given the runs holding it (oldest first) and the runs
    already waiting for it (in line order)."""
    if run_id in holders:
        return Decision(action="proceed")
    if settings.cancel_in_progress:
        return Decision(action="proceed", supersede=tuple(h for h in holders if h != run_id))
    if len(holders) < settings.max and not [w for w in waiting if w != run_id]:
        return Decision(action="proceed")
    return Decision(action="wait", reason=queued_reason(group))


def promote(settings: Settings, *, holders: Sequence[str], waiting: Sequence[str]) -> tuple[str, ...]:
    """The waiting runs (in line order) that take the free slots."""
    free = settings.max - len(set(holders))
    out: list[str] = []
    for run_id in waiting:
        if free <= 0:
            break
        if run_id not in out:
            out.append(run_id)
            free -= 1
    return tuple(out)
