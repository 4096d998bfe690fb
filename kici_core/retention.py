"""Retention: how long finished data is kept, as pure values (the sweeper lives in the adapters).

A :class:`RetentionPolicy` holds one age per kind of data, in days; 0 keeps that kind forever. :func:`cutoffs`
turns it into the instants before which finished data may go, for a given "now" (time is an argument, so tests
use any clock). What "finished" means is the sweeper's rule, stated in ``docs/operations.md``: a pending delivery,
an unfinished run and an undelivered outbox row are never deleted, whatever their age.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["KINDS", "Cutoffs", "RetentionPolicy", "cutoffs"]

KINDS: tuple[str, ...] = (
    "payloads",
    "log_chunks",
    "runs",
    "jobs",
    "steps",
    "check_runs",
    "event_log",
    "idempotency_keys",
)
"""What the sweeper removes and counts (the ``kind`` label of its metrics): payload objects, log chunks, runs with
their jobs, steps and delivered check runs, event-log rows, expired generic idempotency keys."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """Ages in days after which finished data is removed; 0 keeps it forever.

    Attributes:
        payload_days: delivery payload objects (and the runs' payload copies), by the delivery's arrival.
        log_days: job logs, by the run's completion.
        run_days: finished runs with their jobs, steps, needs, logs and delivered check runs, by completion.
        event_log_days: event-log rows (the dedup record of a delivery) and their payloads, by arrival.
        batch_size: rows deleted per statement (each batch is its own short transaction).
    """

    payload_days: int = 30
    log_days: int = 30
    run_days: int = 90
    event_log_days: int = 90
    batch_size: int = 500

    def __post_init__(self) -> None:
        for name in ("payload_days", "log_days", "run_days", "event_log_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (keep forever) or a number of days")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cutoffs:
    """Instants before which each kind may be removed (``None``: kept forever) and the sweep's "now"."""

    now: datetime
    payloads: datetime | None
    logs: datetime | None
    runs: datetime | None
    event_log: datetime | None


def _before(now: datetime, days: int) -> datetime | None:
    return None if days == 0 else now - timedelta(days=days)


def cutoffs(policy: RetentionPolicy, now: datetime) -> Cutoffs:
    """The cutoffs of ``policy`` at ``now`` (a timezone-aware instant)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return Cutoffs(
        now=now,
        payloads=_before(now, policy.payload_days),
        logs=_before(now, policy.log_days),
        runs=_before(now, policy.run_days),
        event_log=_before(now, policy.event_log_days),
    )
