"""Cron arithmetic of ``schedule`` triggers: 5-field expressions in IANA time zones, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_adapters import cron
from kici_core import errors
from tests.support.props import examples

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "America/Santiago",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Europe/London",
]
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC))


def _exists_once(day: datetime, hour: int, minute: int, tz: ZoneInfo) -> tuple[bool, bool]:
    """Whether the wall time ``hour:minute`` on ``day`` exists in ``tz``, and whether it occurs twice."""
    naive = datetime(day.year, day.month, day.day, hour, minute)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    exists = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive
    return exists, first.utcoffset() != second.utcoffset() and exists


@settings(max_examples=examples(50), deadline=None)
@given(after=instants, zone=st.sampled_from(ZONES), hour=st.integers(0, 23), minute=st.integers(0, 59))
def test_a_daily_fire_is_at_its_wall_time_once_a_day_across_dst(
    after: datetime, zone: str, hour: int, minute: int
) -> None:
    tz = ZoneInfo(zone)
    fire = cron.next_after(f"{minute} {hour} * * *", zone, after)
    assert fire > after and fire.tzinfo == UTC
    local = fire.astimezone(tz)
    exists, twice = _exists_once(local, hour, minute, tz)
    if (local.hour, local.minute) == (hour, minute):
        if twice:  # a repeated wall time fires at its first occurrence only
            expected = datetime(local.year, local.month, local.day, hour, minute, tzinfo=tz, fold=0)
            assert fire == expected.astimezone(UTC)
    else:  # only a wall time skipped by a spring-forward change moves: to the end of the gap
        assert not exists, (fire, local)
        assert (fire - timedelta(minutes=1)).astimezone(tz).utcoffset() != local.utcoffset()
    following = cron.next_after(f"{minute} {hour} * * *", zone, fire)
    assert timedelta(hours=22) <= following - fire <= timedelta(hours=26)
    # nothing in between: a fire is never skipped
    assert cron.next_after(f"{minute} {hour} * * *", zone, fire - timedelta(seconds=1)) == fire


@settings(max_examples=examples(50), deadline=None)
@given(
    after=instants, zone=st.sampled_from(ZONES), step=st.sampled_from([1, 5, 10, 15, 30]), down=st.integers(0, 50_000)
)
def test_a_missed_stretch_gives_one_next_fire_right_after_now(after: datetime, zone: str, step: int, down: int) -> None:
    """The scheduler computes the next fire from "now" after firing a missed one: it is the first fire after now,
    at most one period away, so missed fires never pile up."""
    expression = f"*/{step} * * * *"
    due = cron.next_after(expression, zone, after)
    now = due + timedelta(minutes=down, seconds=7)
    upcoming = cron.next_after(expression, zone, now)
    assert now < upcoming <= now + timedelta(minutes=step)
    assert upcoming.astimezone(ZoneInfo(zone)).minute % step == 0  # steps count on the zone's wall clock


@pytest.mark.parametrize(
    ("zone", "after", "expected"),
    [
        # Berlin springs forward on 2024-03-31 at 02:00 -> 03:00: 02:30 fires at 03:00 CEST (01:00Z)
        ("Europe/Berlin", datetime(2024, 3, 30, 12, tzinfo=UTC), datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
        # ... and falls back on 2024-10-27 at 03:00 -> 02:00: 02:30 fires once, at 02:30 CEST (00:30Z)
        ("Europe/Berlin", datetime(2024, 10, 26, 12, tzinfo=UTC), datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),
        ("Europe/Berlin", datetime(2024, 10, 27, 0, 31, tzinfo=UTC), datetime(2024, 10, 28, 1, 30, tzinfo=UTC)),
        ("America/New_York", datetime(2024, 3, 10, 5, tzinfo=UTC), datetime(2024, 3, 10, 7, 0, tzinfo=UTC)),
    ],
)
def test_dst_changes_follow_debian_cron(zone: str, after: datetime, expected: datetime) -> None:
    assert cron.next_after("30 2 * * *", zone, after) == expected


def test_day_names_months_and_lists_work_and_results_are_utc() -> None:
    monday = cron.next_after("0 3 * * MON", "Europe/Berlin", datetime(2024, 1, 1, 3, tzinfo=UTC))
    assert monday == datetime(2024, 1, 8, 2, 0, tzinfo=UTC)
    assert cron.next_after("0 0 1 JAN,JUL *", "UTC", datetime(2024, 2, 1, tzinfo=UTC)) == datetime(
        2024, 7, 1, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("* * * *", "UTC", "must have 5 fields"),
        ("0 * * * * *", "UTC", "must have 5 fields"),
        ("61 * * * *", "UTC", "invalid cron expression"),
        ("0 0 30 2 *", "UTC", "invalid cron expression"),
        ("* * * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("* * * * *", "../etc/passwd", "unknown time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused_with_the_reason(expression: str, zone: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message.replace("(", r"\(")):
        cron.check(expression, zone)
