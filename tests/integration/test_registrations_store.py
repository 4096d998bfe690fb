"""``PgRegistrations.register`` against PostgreSQL: a default-branch push replaces a repository's registrations
and their schedules as a whole (kept, changed, added and dropped in one transaction)."""

from __future__ import annotations

import uuid

import pytest

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.registrations import PgRegistrations
from kici_core.ports import ScheduleSpec, WorkflowRegistration

pytestmark = pytest.mark.anyio


def reg(name: str, sha: str, *schedules: ScheduleSpec) -> WorkflowRegistration:
    return WorkflowRegistration(
        id=str(uuid.uuid4()), org_id="acme", routing_key="github:1", provider="github", repo_identifier="acme/app",
        workflow_name=name, ref="main", sha=sha, repo_url="https://github.com/acme/app.git",
        lock_source={"file": ".kici/workflows/ci.ts"}, workflow={"name": name}, trigger_types=("schedule",),
        schedules=schedules)


async def rows(db: Database) -> list[tuple[str, str, int | None, str | None]]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT r.workflow_name, r.sha, s.trigger_index, s.cron_expression FROM workflow_registrations r"
            " LEFT JOIN workflow_schedules s ON s.registration_id = r.id"
            " ORDER BY r.workflow_name, s.trigger_index")
        return [(r["workflow_name"], r["sha"], r["trigger_index"], r["cron_expression"]) for r in await cur.fetchall()]


async def test_a_new_registration_set_replaces_the_old_one_with_its_schedules(database: Database) -> None:
    store = PgRegistrations(database)
    await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=[
        reg("nightly", "a" * 40, ScheduleSpec(trigger_index=0, cron_expression="0 3 * * *"),
            ScheduleSpec(trigger_index=2, cron_expression="0 4 * * *")),
        reg("weekly", "a" * 40, ScheduleSpec(trigger_index=0, cron_expression="0 5 * * 1")),
        reg("ci", "a" * 40)])
    assert await rows(database) == [
        ("ci", "a" * 40, None, None), ("nightly", "a" * 40, 0, "0 3 * * *"), ("nightly", "a" * 40, 2, "0 4 * * *"),
        ("weekly", "a" * 40, 0, "0 5 * * 1")]
    await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=[
        reg("nightly", "b" * 40, ScheduleSpec(trigger_index=2, cron_expression="30 4 * * *")),
        reg("hourly", "b" * 40, ScheduleSpec(trigger_index=1, cron_expression="0 * * * *"))])
    assert await rows(database) == [
        ("hourly", "b" * 40, 1, "0 * * * *"), ("nightly", "b" * 40, 2, "30 4 * * *")]
    await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=[])
    assert await rows(database) == []
