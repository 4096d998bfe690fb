"""The PostgreSQL dispatch queue and run store: concurrent claims, FIFO, needs release and run conclusion."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest
from psycopg.types.json import Jsonb

from kici_adapters.postgres.dispatch import PgDispatchQueue
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.runs import PgRunStore

pytestmark = pytest.mark.anyio


async def make_run(db: Database, jobs: list[tuple[str, list[str], list[str]]]) -> tuple[str, dict[str, str]]:
    """A run whose jobs are ``(name, labels, needs)``; jobs without needs are queued. Returns ids."""
    run_id = str(uuid.uuid4())
    ids = {name: str(uuid.uuid4()) for name, _, _ in jobs}
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO execution_runs (run_id, workflow_name, provider, routing_key)"
            " VALUES (%s, 'ci', 'local', 'generic:o:s')",
            (run_id,),
        )
        for name, labels, needs in jobs:
            matchers = [{"kind": "exact", "value": v} for v in labels]
            await conn.execute(
                "INSERT INTO execution_jobs (job_id, run_id, job_name, base_name, runs_on, required_labels,"
                " needs_satisfied) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (ids[name], run_id, name, name, Jsonb(matchers), labels, not needs),
            )
            for up in needs:
                await conn.execute(
                    "INSERT INTO execution_job_needs (run_id, job_name, upstream_name) VALUES (%s, %s, %s)",
                    (run_id, name, up),
                )
            if not needs:
                await conn.execute(
                    "INSERT INTO dispatch_queue (id, run_id, workflow_name, job_name, runs_on_labels,"
                    " required_labels) VALUES (%s, %s, 'ci', %s, %s, %s)",
                    (ids[name], run_id, name, Jsonb(labels), labels),
                )
    return run_id, ids


async def claim(queue: PgDispatchQueue, job_id: str, *, agent_id: str, ack_deadline: float) -> bool:
    """Claim one row the way the dispatcher does (a batch of one); True when it was still pending."""
    return job_id in await queue.claim_many([(job_id, agent_id, ack_deadline)])


async def status(db: Database, table: str, key: str, value: str) -> Any:
    async with db.connection() as conn:
        cur = await conn.execute(f"SELECT status FROM {table} WHERE {key} = %s", (value,))  # type: ignore[arg-type]
        row = await cur.fetchone()
        return None if row is None else row["status"]


async def test_two_workers_claiming_concurrently_never_get_the_same_job(database: Database) -> None:
    queue = PgDispatchQueue(database)
    _, ids = await make_run(database, [(f"j{i}", [], []) for i in range(20)])
    won: dict[str, list[str]] = {"w1": [], "w2": []}

    async def worker(name: str) -> None:
        for row in await queue.pending():
            if await claim(queue, row.job_id, agent_id=name, ack_deadline=time.time() + 10):
                won[name].append(row.job_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "w1")
        tg.start_soon(worker, "w2")
    assert not set(won["w1"]) & set(won["w2"])
    assert sorted(won["w1"] + won["w2"]) == sorted(ids.values())


async def test_pending_is_fifo(database: Database) -> None:
    queue = PgDispatchQueue(database)
    _, ids = await make_run(database, [("a", ["linux"], []), ("b", ["linux", "gpu"], []), ("c", [], [])])
    assert [r.job_id for r in await queue.pending()] == [ids["a"], ids["b"], ids["c"]]


async def test_finish_releases_needs_skips_unmet_and_concludes(database: Database) -> None:
    queue = PgDispatchQueue(database)
    runs = PgRunStore(database)
    run_id, ids = await make_run(database, [("build", [], []), ("test", [], ["build"]), ("lint", [], [])])
    assert await claim(queue, ids["build"], agent_id="a", ack_deadline=time.time() + 10)
    await runs.job_started(ids["build"], agent_id="a")
    assert await status(database, "execution_runs", "run_id", run_id) == "running"
    result = await runs.finish_job(ids["build"], "success")
    assert result.queued == (ids["test"],)
    assert await status(database, "dispatch_queue", "id", ids["test"]) == "pending"
    assert await status(database, "dispatch_queue", "id", ids["build"]) == "completed"
    repeat = await runs.finish_job(ids["build"], "failed")
    assert not repeat.changed  # a terminal job is immutable
    await runs.finish_job(ids["test"], "failed", error="boom", row_status="failed")
    done = await runs.finish_job(ids["lint"], "success")
    assert done.run_status == "failed"
    async with database.connection() as conn:
        cur = await conn.execute("SELECT status, failure_reason FROM execution_runs WHERE run_id = %s", (run_id,))
        row = await cur.fetchone()
    assert row is not None and row["failure_reason"] == "Failed jobs: test"


async def test_failed_upstream_skips_downstream_in_cascade(database: Database) -> None:
    runs = PgRunStore(database)
    _, ids = await make_run(database, [("a", [], []), ("b", [], ["a"]), ("c", [], ["b"])])
    result = await runs.finish_job(ids["a"], "failed")
    assert set(result.skipped) == {ids["b"], ids["c"]}
    assert result.run_status == "failed"
