"""The schedule loop: fires registered ``schedule`` triggers (lock-file spec §7.3).

Every orchestrator process runs it; each tick (every 30 s) acts only while holding
``pg_try_advisory_lock(SCHEDULER_LOCK)``, so one process fires at a time and another takes over when it dies.
A tick accepts one delivery (source ``internal``, event ``schedule``) for every schedule whose next fire is
due, then records the fire and computes the next one after the tick's time: fires missed while no process ran
(or while the database was down) run once, as soon as a tick sees them, carrying the time they were due. The
delivery id names the schedule and that time, so a fire is never accepted twice, whatever crashes between
accepting it and recording it. From there a fire is processed like any webhook: event-log entry, decision
trace, run, dispatch.

The clock is injectable and :meth:`ScheduleLoop.tick` takes the time to act at, so tests drive schedules
without waiting for the wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from kici_adapters import cron
from kici_adapters.postgres import singletons
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.registrations import PgRegistrations
from kici_core import errors, registrations
from kici_core.ports import DeliveryInbox

__all__ = ["SCHEDULER_LOCK", "TICK_SECONDS", "ScheduleLoop"]

log = logging.getLogger("kici.scheduler")

SCHEDULER_LOCK = singletons.lock_key("schedules")
"""``pg_try_advisory_lock`` key held by the process that fires schedules."""
TICK_SECONDS = 30.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ScheduleLoop:
    """Fires due schedules (see the module docstring).

    Args:
        store: registrations and schedules.
        inbox: where fires are accepted as deliveries.
        wake: called after new fires were accepted (wakes the delivery processors).
        clock: the current time (UTC, aware).
        tick_seconds: time between ticks.
    """

    def __init__(
        self,
        *,
        store: PgRegistrations,
        inbox: DeliveryInbox,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _utc_now,
        tick_seconds: float = TICK_SECONDS,
        db: Database | None = None,
        instance_id: str = "",
    ) -> None:
        self.store = store
        self._db = db
        self._instance_id = instance_id
        self._inbox = inbox
        self._wake = wake
        self._clock = clock
        self._tick = tick_seconds

    async def tick(self, now: datetime | None = None) -> list[str]:
        """Fire every schedule due at ``now`` (default: the clock); returns the delivery ids accepted (none when
        another process holds the scheduler lock)."""
        at = now if now is not None else self._clock()
        fired: list[str] = []
        held = (
            singletons.hold(self._db, "schedules", self._instance_id)
            if self._db is not None
            else self.store.try_lock(SCHEDULER_LOCK)
        )
        async with held as mine:
            if not mine:
                return fired
            for schedule in await self.store.due(at):
                due = schedule.next_fire_at
                assert due is not None
                try:
                    upcoming: datetime | None = cron.next_after(schedule.cron_expression, schedule.timezone, at)
                    error = None
                except errors.InvalidInput as exc:
                    upcoming, error = None, exc.message
                delivery = registrations.schedule_delivery(schedule, scheduled_at=due, received_at=at)
                result = await self._inbox.accept(delivery)
                await self.store.fired(
                    schedule.id, due_at=due, next_fire_at=upcoming, delivery_id=delivery.delivery_id, error=error
                )
                if not result.duplicate:
                    fired.append(delivery.delivery_id)
                log.info(
                    "Schedule fired",
                    extra={
                        "scheduleId": schedule.id,
                        "repo": schedule.repo_identifier,
                        "workflow": schedule.workflow_name,
                        "cron": schedule.cron_expression,
                        "dueAt": due.isoformat(),
                        "deliveryId": delivery.delivery_id,
                        "duplicate": result.duplicate,
                        "nextFireAt": upcoming.isoformat() if upcoming else None,
                    },
                )
        if fired:
            self._wake()
        return fired

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.tick()
            except errors.Unavailable as exc:
                log.warning("schedule tick skipped: storage unavailable", extra={"error": str(exc)})
            await anyio.sleep(self._tick)
