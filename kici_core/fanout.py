"""Fan-out limits of matrix jobs (lock-file spec §2.5): ``maxParallel`` and ``failFast``.

A static job with a matrix fans out into children (``build (x64, linux)``, ...). ``maxParallel: N`` lets at
most N of them be released for dispatch at once: :func:`cap` holds back the others (they stay ``pending``) and
each time a child ends the next one is released, in plan order. ``failFast: true`` stops the fan-out after the
first child fails: :func:`fail_fast_victims` names the siblings still to stop (children waiting are
cancelled at once, children on an agent get ``job.cancel``). Both are pure decisions over job statuses; the
run store applies them in the transaction that records a job's end, and planning applies :func:`cap` to a
run's first dispatches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from kici_core import states
from kici_core.jsontypes import JSONValue

__all__ = ["FAIL_FAST_REASON", "Limits", "cap", "fail_fast_victims", "limits_of"]

TERMINAL = states.TERMINAL[states.Kind.job]
FAILED = frozenset({"failed", "timed_out_stale"})
FAIL_FAST_REASON = "Cancelled: fail-fast after matrix child {name!r} failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """One expanded job's fan-out settings: its base job and, when it is a matrix child, the base's limits."""

    base: str
    child: bool
    max_parallel: int | None = None
    fail_fast: bool = False


def limits_of(base: str, job_config: Mapping[str, JSONValue], *, child: bool) -> Limits:
    """The limits a job's ``jobConfig`` (the lock job) declares; only matrix children are limited."""
    raw = job_config.get("maxParallel")
    max_parallel = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1 else None
    return Limits(
        base=base,
        child=child,
        max_parallel=max_parallel if child else None,
        fail_fast=child and job_config.get("failFast") is True,
    )


def cap(
    runnable: Iterable[str], limits: Mapping[str, Limits], statuses: Mapping[str, str], released: AbstractSet[str]
) -> tuple[str, ...]:
    """The jobs of ``runnable`` that may be released now: a matrix child only while fewer than its base's
    ``maxParallel`` siblings are released and not yet finished. Order is kept; other jobs pass."""
    active: dict[str, int] = {}
    for name in released:
        lim = limits.get(name)
        if lim is not None and lim.max_parallel is not None and statuses.get(name) not in TERMINAL:
            active[lim.base] = active.get(lim.base, 0) + 1
    out: list[str] = []
    for name in runnable:
        lim = limits.get(name)
        if lim is None or lim.max_parallel is None:
            out.append(name)
            continue
        if active.get(lim.base, 0) < lim.max_parallel:
            active[lim.base] = active.get(lim.base, 0) + 1
            out.append(name)
    return tuple(out)


def fail_fast_victims(limits: Mapping[str, Limits], statuses: Mapping[str, str]) -> dict[str, str]:
    """Unfinished matrix children of ``failFast`` jobs one of whose children failed: ``{child: reason}``."""
    first_failure: dict[str, str] = {}
    for name, status in statuses.items():
        lim = limits.get(name)
        if lim is not None and lim.fail_fast and status in FAILED:
            first_failure.setdefault(lim.base, name)
    out: dict[str, str] = {}
    for name, status in statuses.items():
        lim = limits.get(name)
        if lim is not None and lim.base in first_failure and status not in TERMINAL:
            out[name] = FAIL_FAST_REASON.format(name=first_failure[lim.base])
    return out
