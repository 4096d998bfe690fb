"""PgPlatformOutbox against a real PostgreSQL: durable, ordered, deleted only after a confirmed send, capped;
rows hold domain events, turned into frames when sent (rows of an older release hold frames and still read)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from kici_adapters import metrics
from kici_adapters.postgres.outbox import PgPlatformOutbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.runs import PgRunStore
from kici_core import platform_events

pytestmark = pytest.mark.anyio


class Link:
    """A socket stand-in: records frames; can fail the n-th send or the confirmation."""

    def __init__(self, *, fail_at: int | None = None, fail_confirm: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.confirmed = 0
        self._fail_at = fail_at
        self._fail_confirm = fail_confirm

    async def send(self, frame: Any) -> None:
        if self._fail_at is not None and len(self.sent) == self._fail_at:
            raise ConnectionError("link dropped")
        self.sent.append(dict(frame))

    async def confirm(self) -> None:
        if self._fail_confirm:
            raise ConnectionError("no pong")
        self.confirmed += 1


def _log(i: int) -> platform_events.LogLines:
    return platform_events.LogLines(run_id="r", job_id="j", step_index=0, lines=(f"line {i}",))


async def test_rows_are_sent_oldest_first_and_deleted(database: Database) -> None:
    outbox = PgPlatformOutbox(database, batch_size=7)
    for i in range(20):
        await outbox.publish(_log(i))
    assert await outbox.size() == 20
    link = Link()
    assert await outbox.drain(link.send, link.confirm) == 20
    assert [f["lines"][0] for f in link.sent] == [f"line {i}" for i in range(20)]
    assert all(isinstance(f["messageId"], str) and isinstance(f["timestamp"], int) for f in link.sent)
    assert len({f["messageId"] for f in link.sent}) == 20
    assert link.confirmed == 3  # one confirmation per batch of 7
    assert await outbox.size() == 0


async def test_rows_survive_a_failed_send_and_a_new_outbox(database: Database) -> None:
    outbox = PgPlatformOutbox(database, batch_size=5)
    for i in range(12):
        await outbox.publish(_log(i))
    broken = Link(fail_at=7)  # the link drops in the middle of the second batch
    with pytest.raises(ConnectionError):
        await outbox.drain(broken.send, broken.confirm)
    assert await outbox.size() == 7  # the first, confirmed batch is gone; nothing else was lost

    unconfirmed = Link(fail_confirm=True)
    with pytest.raises(ConnectionError):
        await outbox.drain(unconfirmed.send, unconfirmed.confirm)
    assert await outbox.size() == 7  # sent but never confirmed: kept

    restarted = PgPlatformOutbox(database)  # as after a process restart: state is only in the table
    link = Link()
    await restarted.drain(link.send, link.confirm)
    assert [f["lines"][0] for f in link.sent] == [f"line {i}" for i in range(5, 12)]


async def test_rows_written_by_other_code_get_ids_and_field_rules(database: Database) -> None:
    async with database.transaction() as conn:  # a dispatcher writing in its own state-change transaction
        await conn.execute(
            "INSERT INTO platform_outbox (kind, payload) VALUES (%s, %s)",
            (
                "job.status.forward",
                Jsonb(
                    {
                        "type": "job.status.forward",
                        "runId": "r",
                        "jobId": "j",
                        "jobName": "build",
                        "status": "running",
                        "agentId": None,
                        "startedAt": None,
                        "orgId": "acme",
                    }
                ),
            ),
        )
    link = Link()
    await PgPlatformOutbox(database).drain(link.send, link.confirm)
    (frame,) = link.sent
    assert frame["agentId"] is None  # nullable: kept
    assert "startedAt" not in frame and "orgId" not in frame
    assert isinstance(frame["messageId"], str) and isinstance(frame["timestamp"], int)


async def test_cap_drops_the_oldest_and_counts_them(database: Database) -> None:
    outbox = PgPlatformOutbox(database, cap=10)
    for i in range(25):
        await outbox.publish(_log(i))
    before = metrics.REGISTRY.get_sample_value("kici_platform_buffer_dropped_total") or 0.0
    assert await outbox.trim() == 15
    after = metrics.REGISTRY.get_sample_value("kici_platform_buffer_dropped_total") or 0.0
    assert after - before == 15
    link = Link()
    await outbox.drain(link.send, link.confirm)
    assert [f["lines"][0] for f in link.sent] == [f"line {i}" for i in range(15, 25)]


async def test_rows_hold_domain_events_and_leave_as_frames(database: Database) -> None:
    outbox = PgPlatformOutbox(database)
    await outbox.publish(
        platform_events.JobStatusChanged(
            run_id="r",
            job_id="j",
            job_name="build",
            status="failed",
            runs_on_labels=("linux",),
            error_message="x" * 3000,
            log_bytes=12,
        )
    )
    async with database.connection() as conn:
        cur = await conn.execute("SELECT kind, payload FROM platform_outbox")
        (row,) = await cur.fetchall()
    assert row["kind"] == "job_status" and row["payload"]["job_name"] == "build" and "type" not in row["payload"]
    link = Link()
    await outbox.drain(link.send, link.confirm)
    (frame,) = link.sent
    assert frame["type"] == "job.status.forward" and frame["jobName"] == "build" and frame["status"] == "failed"
    assert frame["runsOnLabels"] == ["linux"] and frame["logBytes"] == 12
    assert frame["agentId"] is None and frame["orchestratorId"] is None  # nullable: sent as null
    assert len(frame["errorMessage"]) == 2000  # bounded
    assert isinstance(frame["messageId"], str) and isinstance(frame["timestamp"], int)


async def test_a_job_reported_by_its_agent_reaches_the_platform_as_frames(database: Database) -> None:
    """The run store writes events in the state change's transaction; the drain sends them as frames."""
    run_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with database.transaction() as conn:
        await conn.execute(
            "INSERT INTO execution_runs (run_id, workflow_name, provider, routing_key, repo_identifier,"
            " sha, ref) VALUES (%s, 'ci', 'github', 'github:42', 'acme/app', %s, 'main')",
            (run_id, "a" * 40),
        )
        await conn.execute(
            "INSERT INTO execution_jobs (job_id, run_id, job_name, base_name, runs_on, required_labels,"
            " needs_satisfied) VALUES (%s, %s, 'build', 'build', %s, %s, true)",
            (job_id, run_id, Jsonb([{"kind": "exact", "value": "linux"}]), ["linux"]),
        )
    runs = PgRunStore(database, forward=True, instance_id="orch-1")
    try:
        await runs.job_started(job_id, agent_id="agent-1")
        await runs.step_status(
            run_id=run_id,
            job_id=job_id,
            step_index=0,
            step_name="test",
            state="success",
            data={"exitCode": 0, "secretsAccessed": ["TOKEN"]},
            step_type=None,
        )
        await runs.append_log(run_id=run_id, job_id=job_id, step_index=0, lines=["ok 1", "ok 2"])
        await runs.finish_job(job_id, "success")
    finally:
        await runs.aclose()
    async with database.connection() as conn:
        cur = await conn.execute("SELECT kind FROM platform_outbox ORDER BY seq")
        kinds = [row["kind"] for row in await cur.fetchall()]
    assert kinds == ["job_status", "run_status", "step_status", "log_lines", "job_status", "run_status"]
    link = Link()
    await PgPlatformOutbox(database).drain(link.send, link.confirm)
    assert [f["type"] for f in link.sent] == [
        "job.status.forward",
        "execution.status",
        "step.status.forward",
        "log.chunk",
        "job.status.forward",
        "execution.status",
    ]
    running, started, step, log, done, concluded = link.sent
    assert (running["status"], running["agentId"], running["orchestratorId"], running["runsOnLabels"]) == (
        "running",
        "agent-1",
        "orch-1",
        ["linux"],
    )
    assert isinstance(running["startedAt"], int) and "logBytes" not in running
    assert (started["status"], started["repoIdentifier"], started["sha"]) == ("running", "acme/app", "a" * 40)
    assert step["stepName"] == "test" and step["data"] == {"exitCode": 0} and step["secretsAccessed"] == ["TOKEN"]
    assert (log["runId"], log["jobId"], log["stepIndex"], log["lines"]) == (run_id, job_id, 0, ["ok 1", "ok 2"])
    assert done["status"] == "success" and done["logBytes"] > 0 and isinstance(done["completedAt"], int)
    assert concluded["status"] == "success" and isinstance(concluded["durationMs"], int)
    assert all(isinstance(f["messageId"], str) and isinstance(f["timestamp"], int) for f in link.sent)
