"""Cron arithmetic for ``schedule`` triggers: the next fire of a 5-field expression in an IANA time zone.

The expression is the standard 5-field one (minute, hour, day of month, month, day of week; names such as
``MON`` and ``JAN``, lists, ranges and steps), evaluated by ``cronsim`` in the trigger's time zone
(``zoneinfo``). Daylight-saving changes follow Debian cron: a time that does not exist (spring forward) fires
at the first minute after the gap, and a time that occurs twice (fall back) fires once, at its first
occurrence; expressions that run every minute or every hour simply follow the clock. All results are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from kici_core import errors

__all__ = ["check", "next_after", "zone"]


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``. Raises ``InvalidInput`` for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise errors.InvalidInput(f"unknown time zone {name!r}") from exc


def _sim(expression: str, start: datetime) -> CronSim:
    fields = expression.split()
    if len(fields) != 5:
        raise errors.InvalidInput(
            f"cron expression {expression!r} must have 5 fields (minute hour day-of-month month day-of-week)"
        )
    try:
        return CronSim(expression, start)
    except (CronSimError, ValueError) as exc:
        raise errors.InvalidInput(f"invalid cron expression {expression!r}: {exc}") from exc


def check(expression: str, timezone: str) -> None:
    """Raise ``InvalidInput`` naming the problem when the expression or the time zone is not usable."""
    next_after(expression, timezone, datetime(2000, 1, 1, tzinfo=UTC))


def next_after(expression: str, timezone: str, after: datetime) -> datetime:
    """The first fire strictly after ``after`` (aware), in UTC.

    Raises:
        InvalidInput: a bad expression or time zone, or an expression that never fires (``0 0 30 2 *``).
    """
    tz = zone(timezone)
    start = after.replace(second=0, microsecond=0)
    # A local time that occurs twice fires at its first occurrence; from inside the repeated hour that one is
    # in the past, so look again a minute later (at most an hour of minutes).
    for _ in range(62):
        try:
            fire = next(iter(_sim(expression, start.astimezone(tz))))
        except (CronSimError, ValueError, StopIteration) as exc:
            raise errors.InvalidInput(f"cron expression {expression!r} never fires") from exc
        result = fire.astimezone(UTC)
        if result > after:
            return result
        start += timedelta(minutes=1)
    raise errors.InvalidInput(f"cron expression {expression!r} has no fire after {after.isoformat()}")
