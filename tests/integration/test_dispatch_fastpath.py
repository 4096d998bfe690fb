"""The dispatcher's hot path: incremental pending reads and batched claims that load job.dispatch rows."""

from __future__ import annotations

import time

import anyio
import pytest

from kici_adapters.postgres.dispatch import PgDispatchQueue
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.runs import PgRunStore
from tests.integration.test_dispatch_queue import claim, make_run, status

pytestmark = pytest.mark.anyio


async def test_pending_since_reads_newer_rows_and_named_ones(database: Database) -> None:
    queue = PgDispatchQueue(database)
    try:
        run1, first = await make_run(database, [("a", [], []), ("b", [], [])])
        rows = await queue.pending_since(0)
        assert [r.job_id for r in rows] == [first["a"], first["b"]]
        high = max(r.seq for r in rows)
        run2, second = await make_run(database, [("c", [], [])])
        assert [r.job_id for r in await queue.pending_since(high)] == [second["c"]]
        # a row behind the watermark is found when a notification names its job or its run
        assert [r.job_id for r in await queue.pending_since(high + 10, named=[first["b"]])] == [first["b"]]
        assert {r.job_id for r in await queue.pending_since(high + 10, named=[run1, "not-a-uuid"])} == {
            first["a"],
            first["b"],
        }
        assert await queue.pending_since(high + 10, named=[""]) == []
        # only pending rows
        assert await claim(queue, second["c"], agent_id="x", ack_deadline=time.time() + 10)
        assert await queue.pending_since(high, named=[run2]) == []
    finally:
        await queue.aclose()


async def test_pending_positions_lists_pending_rows_without_their_details(database: Database) -> None:
    queue = PgDispatchQueue(database)
    try:
        _run1, first = await make_run(database, [("a", [], []), ("b", [], [])])
        positions = await queue.pending_positions()
        assert [job_id for job_id, _seq in positions] == [first["a"], first["b"]]
        assert positions[0][1] < positions[1][1]
        assert await claim(queue, first["a"], agent_id="x", ack_deadline=time.time() + 10)
        assert [job_id for job_id, _seq in await queue.pending_positions()] == [first["b"]]
        assert await queue.pending_positions(limit=0) == []
    finally:
        await queue.aclose()


async def test_claim_many_claims_pending_rows_once_and_loads_them(database: Database) -> None:
    queue = PgDispatchQueue(database)
    runs = PgRunStore(database)
    try:
        run_id, ids = await make_run(database, [("build", [], []), ("test", [], ["build"]), ("lint", [], [])])
        deadline = time.time() + 30
        assert await claim(queue, ids["lint"], agent_id="other", ack_deadline=deadline)
        won = await queue.claim_many([(ids["build"], "a1", deadline), (ids["lint"], "a2", deadline)])
        assert set(won) == {ids["build"]}  # lint was no longer pending
        row = won[ids["build"]]
        assert row.run_id == run_id and row.job_name == "build" and row.upstream_statuses == {}
        assert await status(database, "dispatch_queue", "id", ids["build"]) == "dispatched"
        assert await queue.owned("a1", ids["build"])
        assert await queue.claim_many([(ids["build"], "a3", deadline)]) == {}  # never twice
        # a released downstream carries its upstream's status and outputs
        await runs.job_started(ids["build"], agent_id="a1")
        result = await runs.finish_job(ids["build"], "success", outputs={"v": "1"})
        assert result.queued == (ids["test"],)
        won = await queue.claim_many([(ids["test"], "a1", deadline)])
        loaded = won[ids["test"]]
        assert loaded.upstream_statuses == {"build": "success"}
        assert loaded.upstream_outputs == {"build": {"v": "1"}}
        assert await queue.claim_many([]) == {}
    finally:
        await queue.aclose()


async def test_concurrent_batches_never_share_a_job(database: Database) -> None:
    queues = [PgDispatchQueue(database) for _ in range(3)]
    try:
        _, ids = await make_run(database, [(f"j{i}", [], []) for i in range(30)])
        jobs = sorted(ids.values())
        won: list[list[str]] = [[] for _ in queues]

        async def claimer(i: int) -> None:
            for start in range(0, len(jobs), 7):
                got = await queues[i].claim_many([(j, f"agent{i}", time.time() + 30) for j in jobs[start : start + 7]])
                won[i] += list(got)

        async with anyio.create_task_group() as tg:
            for i in range(len(queues)):
                tg.start_soon(claimer, i)
        everything = [j for w in won for j in w]
        assert sorted(everything) == jobs  # each claimed exactly once
    finally:
        for q in queues:
            await q.aclose()


async def test_acks_resolved_clears_only_rows_still_dispatched_to_that_agent(database: Database) -> None:
    queue = PgDispatchQueue(database)
    try:
        _, ids = await make_run(database, [("a", [], []), ("b", [], []), ("c", [], [])])
        deadline = time.time() + 30
        won = await queue.claim_many([(ids["a"], "x", deadline), (ids["b"], "y", deadline)])
        assert set(won) == {ids["a"], ids["b"]}
        await queue.acks_resolved([(ids["a"], "x"), (ids["b"], "someone-else"), (ids["c"], "x")])
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT id::text AS id, ack_deadline, status FROM dispatch_queue WHERE id = ANY(%s::uuid[])",
                (list(ids.values()),),
            )
            rows = {r["id"]: r for r in await cur.fetchall()}
        assert rows[ids["a"]]["ack_deadline"] is None
        assert rows[ids["b"]]["ack_deadline"] is not None  # another agent's dispatch keeps its deadline
        assert rows[ids["c"]]["status"] == "pending"
        await queue.acks_resolved([])
    finally:
        await queue.aclose()
