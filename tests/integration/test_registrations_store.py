"""``PgRegistrations.register`` against PostgreSQL: a default-branch push replaces a repository's registrations
and their schedules as a whole (kept, changed, added and dropped in one transaction)."""

from __future__ import annotations

import dataclasses
import functools
import uuid

import anyio
import pytest

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.registrations import PgRegistrations
from kici_core.registration_records import ScheduleSpec, WorkflowRegistration

pytestmark = pytest.mark.anyio


def reg(name: str, sha: str, *schedules: ScheduleSpec) -> WorkflowRegistration:
    return WorkflowRegistration(
        id=str(uuid.uuid4()),
        org_id="acme",
        routing_key="github:1",
        provider="github",
        repo_identifier="acme/app",
        workflow_name=name,
        ref="main",
        sha=sha,
        repo_url="https://github.com/acme/app.git",
        lock_source={"file": ".kici/workflows/ci.ts"},
        workflow={"name": name},
        trigger_types=("schedule",),
        schedules=schedules,
    )


async def rows(db: Database) -> list[tuple[str, str, int | None, str | None]]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT r.workflow_name, r.sha, s.trigger_index, s.cron_expression FROM workflow_registrations r"
            " LEFT JOIN workflow_schedules s ON s.registration_id = r.id"
            " ORDER BY r.workflow_name, s.trigger_index"
        )
        return [(r["workflow_name"], r["sha"], r["trigger_index"], r["cron_expression"]) for r in await cur.fetchall()]


async def test_a_new_registration_set_replaces_the_old_one_with_its_schedules(database: Database) -> None:
    store = PgRegistrations(database)
    await store.register(
        org_id="acme",
        routing_key="github:1",
        repo="acme/app",
        workflows=[
            reg(
                "nightly",
                "a" * 40,
                ScheduleSpec(trigger_index=0, cron_expression="0 3 * * *"),
                ScheduleSpec(trigger_index=2, cron_expression="0 4 * * *"),
            ),
            reg("weekly", "a" * 40, ScheduleSpec(trigger_index=0, cron_expression="0 5 * * 1")),
            reg("ci", "a" * 40),
        ],
    )
    assert await rows(database) == [
        ("ci", "a" * 40, None, None),
        ("nightly", "a" * 40, 0, "0 3 * * *"),
        ("nightly", "a" * 40, 2, "0 4 * * *"),
        ("weekly", "a" * 40, 0, "0 5 * * 1"),
    ]
    await store.register(
        org_id="acme",
        routing_key="github:1",
        repo="acme/app",
        workflows=[
            reg("nightly", "b" * 40, ScheduleSpec(trigger_index=2, cron_expression="30 4 * * *")),
            reg("hourly", "b" * 40, ScheduleSpec(trigger_index=1, cron_expression="0 * * * *")),
        ],
    )
    assert await rows(database) == [("hourly", "b" * 40, 1, "0 * * * *"), ("nightly", "b" * 40, 2, "30 4 * * *")]
    await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=[])
    assert await rows(database) == []


async def registration_rows(db: Database) -> list[dict[str, object]]:
    async with db.connection() as conn:
        cur = await conn.execute(
            "SELECT workflow_name, sha, ref, delivery_id, workflow, updated_at"
            " FROM workflow_registrations ORDER BY workflow_name"
        )
        return [dict(r) for r in await cur.fetchall()]


def pushed(
    name: str,
    sha: str,
    delivery: str,
    *,
    ref: str = "main",
    body: dict[str, object] | None = None,
) -> WorkflowRegistration:
    return dataclasses.replace(
        reg(name, sha, ScheduleSpec(trigger_index=0, cron_expression="0 3 * * *")),
        delivery_id=delivery,
        ref=ref,
        workflow=body or {"name": name},
    )


async def test_registering_what_is_stored_again_writes_nothing_and_any_difference_is_written(
    database: Database,
) -> None:
    store = PgRegistrations(database)
    first = [pushed("nightly", "a" * 40, "d-1"), pushed("ci", "a" * 40, "d-1")]
    await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=first)
    stored = await registration_rows(database)
    # every later delivery of the same commit registers the same workflows (new ids, its own delivery id)
    again = [pushed("ci", "a" * 40, "d-2"), pushed("nightly", "a" * 40, "d-2")]
    await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=again)
    assert store.unchanged == 1
    assert await registration_rows(database) == stored  # the first delivery's rows, untouched

    # a changed workflow object, branch or workflow set is written, even at the same commit
    for changed in (
        [pushed("ci", "a" * 40, "d-3"), pushed("nightly", "a" * 40, "d-3", body={"name": "x"})],
        [pushed("ci", "a" * 40, "d-4", ref="trunk"), pushed("nightly", "a" * 40, "d-4", ref="trunk")],
        [pushed("ci", "a" * 40, "d-5")],
    ):
        await store.register(org_id="acme", routing_key="github:1", repo="acme/app", workflows=changed)
        assert [
            (r["workflow_name"], r["delivery_id"], r["ref"], r["workflow"]) for r in await registration_rows(database)
        ] == sorted((w.workflow_name, w.delivery_id, w.ref, dict(w.workflow)) for w in changed)
    assert store.unchanged == 1
    # a new commit is written too
    await store.register(
        org_id="acme", routing_key="github:1", repo="acme/app", workflows=[pushed("ci", "b" * 40, "d-6")]
    )
    assert [(r["sha"], r["delivery_id"]) for r in await registration_rows(database)] == [("b" * 40, "d-6")]
    assert store.unchanged == 1


async def test_concurrent_deliveries_of_a_registered_commit_all_leave_it_alone(database: Database) -> None:
    store = PgRegistrations(database)
    await store.register(
        org_id="acme",
        routing_key="github:1",
        repo="acme/app",
        workflows=[pushed("ci", "a" * 40, "d-0"), pushed("nightly", "a" * 40, "d-0")],
    )
    stored = await registration_rows(database)
    async with anyio.create_task_group() as tg:
        for i in range(1, 9):
            tg.start_soon(
                functools.partial(
                    store.register,
                    org_id="acme",
                    routing_key="github:1",
                    repo="acme/app",
                    workflows=[pushed("ci", "a" * 40, f"d-{i}"), pushed("nightly", "a" * 40, f"d-{i}")],
                )
            )
    assert store.unchanged == 8
    assert await registration_rows(database) == stored
