"""The retention sweeper against a real PostgreSQL, with a clock the test moves (nothing sleeps).

Deliveries are accepted through the real inbox and their payloads offloaded to object storage; runs, jobs, steps,
logs and check runs are written as the pipeline and the dispatcher write them. The sweeper then removes, kind by
kind and in batches, exactly what is finished and past its age, and never a pending delivery, an unfinished run or
an undelivered check-run update.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from kici_adapters import metrics
from kici_adapters.postgres import singletons
from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.offload import PayloadOffloader
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.retention import PgRetention
from kici_core import errors, keys
from kici_core.delivery_records import Delivery
from kici_core.retention import RetentionPolicy
from kici_core.testing import fakes
from kici_runtime.orchestrator.retention import RetentionSweeper, report_json
from tests.support.pg import scalar

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = 86_400.0


class World:
    """Accepted deliveries and their runs, keyed by a short name."""

    def __init__(self, db: Database, blobs: fakes.FakeBlobStore) -> None:
        self.db = db
        self.blobs = blobs
        self.inbox = PgDeliveryInbox(db, blobs)
        self.events: dict[str, str] = {}  # name -> event_log id
        self.runs: dict[str, str] = {}

    async def deliver(self, name: str, *, state: str = "done") -> str:
        body = b'{"ref": "refs/heads/main", "after": "%s"}' % name.encode()
        await self.inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id=name,
                routing_key="github:1",
                event="push",
                action=None,
                source="direct",
                provider="github",
                body=body,
                received_at=T0,
            )
        )
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT id FROM event_log WHERE delivery_id = %s", (name,))
            row = await cur.fetchone()
            assert row is not None
            await conn.execute("UPDATE delivery_inbox SET state = %s WHERE event_log_id = %s", (state, row["id"]))
        self.events[name] = str(row["id"])
        return self.events[name]

    async def run(
        self,
        name: str,
        delivery: str,
        *,
        status: str = "success",
        job_status: str = "success",
        completed: datetime | None = T0 + timedelta(hours=1),
        check_sent: bool = True,
        log_object: bool = False,
    ) -> str:
        run_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO execution_runs (run_id, event_log_id, org_id, delivery_id, workflow_name, status,"
                " provider, routing_key, created_at, completed_at) VALUES (%s, %s, 'acme', %s, %s, %s, 'github',"
                " 'github:1', %s, %s)",
                (run_id, self.events[delivery], delivery, name, status, T0, completed),
            )
            await conn.execute(
                "INSERT INTO execution_jobs (job_id, run_id, job_name, base_name, status, created_at)"
                " VALUES (%s, %s, 'build', 'build', %s, %s)",
                (job_id, run_id, job_status, T0),
            )
            await conn.execute(
                "INSERT INTO dispatch_queue (id, run_id, workflow_name, job_name, status, created_at)"
                " VALUES (%s, %s, %s, 'build', %s, %s)",
                (job_id, run_id, name, "completed" if job_status == "success" else "dispatched", T0),
            )
            for index in range(2):
                await conn.execute(
                    "INSERT INTO execution_steps (run_id, job_id, step_index, step_name, status)"
                    " VALUES (%s, %s, %s, 'step', 'success')",
                    (run_id, job_id, index),
                )
            for seq in range(3):
                await conn.execute(
                    "INSERT INTO log_chunks (run_id, job_id, step_index, seq, content, byte_count)"
                    " VALUES (%s, %s, 0, %s, 'line', 4)",
                    (run_id, job_id, seq),
                )
            if log_object:
                key = keys.log_chunk_key(run_id, "build", 0, 3)
                await self.blobs.put(key, b"big log")
                await conn.execute(
                    "INSERT INTO log_chunks (run_id, job_id, step_index, seq, object_key, byte_count)"
                    " VALUES (%s, %s, 0, 3, %s, 7)",
                    (run_id, job_id, key),
                )
            await conn.execute(
                "INSERT INTO github_check_runs (run_id, external_id, routing_key, repo, head_sha, name, status,"
                " version, sent_version) VALUES (%s, %s, 'github:1', 'acme/app', 'abc', %s, 'completed', 2, %s)",
                (run_id, run_id, f"kici/{name}", 2 if check_sent else 1),
            )
            await conn.execute(
                "INSERT INTO execution_run_events (run_id, event) VALUES (%s, %s)", (run_id, Jsonb({"event": "push"}))
            )
        await self.blobs.put(keys.run_payload_key(run_id), b"{}", durable=False)
        self.runs[name] = run_id
        return run_id

    async def count(self, table: str, where: str = "true", *args: Any) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) AS n FROM {table} WHERE {where}", args)  # type: ignore[arg-type]
            row = await cur.fetchone()
            return int(row["n"]) if row else 0


def deleted(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value("kici_retention_deleted_total", {"kind": kind}) or 0.0


async def build(database: Database) -> tuple[World, fakes.FakeClock, RetentionSweeper]:
    blobs = fakes.FakeBlobStore()
    w = World(database, blobs)
    await w.deliver("finished")
    await w.deliver("waiting", state="pending")  # accepted, never processed: never deleted
    await w.deliver("busy")  # processed, but its run is still running
    await w.deliver("parked", state="failed")
    await PayloadOffloader(database, blobs).run_once()
    await w.run("done", "finished", log_object=True)
    await w.run("unsent", "finished", check_sent=False)  # its check run's last update is not sent yet
    await w.run("running", "busy", status="running", job_status="running", completed=None)
    clock = fakes.FakeClock(T0)
    sweeper = RetentionSweeper(
        db=database,
        store=PgRetention(database, blobs),
        policy=RetentionPolicy(batch_size=1),
        instance_id="proc-a",
        clock=clock.now,
    )
    return w, clock, sweeper


async def test_sweeps_remove_finished_data_by_age_in_batches_and_keep_everything_unfinished(database: Database) -> None:
    w, clock, sweeper = await build(database)
    payload_of = {n: keys.event_log_payload_key("acme", n) for n in ("finished", "waiting", "busy", "parked")}
    assert all(k in w.blobs.objects for k in payload_of.values())
    before = {k: deleted(k) for k in ("payloads", "log_chunks", "runs", "jobs", "steps", "check_runs", "event_log")}

    clock.advance(29 * DAY)  # nothing is old enough yet
    report = await sweeper.sweep_now()
    assert not any(report.counts.values()), report.counts

    clock.advance(2 * DAY)  # 31 days: payloads and logs of finished work go
    report = await sweeper.sweep_now()
    assert report.counts["payloads"] == 2  # "finished" and "parked"; not "waiting" (pending) nor "busy" (running)
    assert report.counts["log_chunks"] == 7  # 4 of "done" (one in object storage) and 3 of "unsent"
    assert payload_of["finished"] not in w.blobs.objects and payload_of["parked"] not in w.blobs.objects
    assert payload_of["waiting"] in w.blobs.objects and payload_of["busy"] in w.blobs.objects
    assert keys.run_payload_key(w.runs["done"]) not in w.blobs.objects
    assert keys.run_payload_key(w.runs["running"]) in w.blobs.objects
    assert not [k for k in w.blobs.objects if "/chunk-" in k]
    row = await w.count(
        "event_log",
        "delivery_id = 'finished' AND payload_key IS NULL AND payload_omitted AND payload_omitted_reason = 'expired'",
    )
    assert row == 1
    assert await w.count("log_chunks", "run_id = %s", w.runs["running"]) == 3
    assert await w.count("execution_runs") == 3 and await w.count("event_log") == 4

    clock.advance(60 * DAY)  # 91 days: finished runs and event-log rows go
    report = await sweeper.sweep_now()
    assert (report.counts["runs"], report.counts["jobs"], report.counts["steps"], report.counts["check_runs"]) == (
        1,
        1,
        2,
        1,
    )  # "done" only: "unsent" waits for its check run, "running" is not finished
    assert {r for r in w.runs if await w.count("execution_runs", "run_id = %s", w.runs[r])} == {"unsent", "running"}
    assert await w.count("execution_jobs", "run_id = %s", w.runs["done"]) == 0
    assert await w.count("execution_steps", "run_id = %s", w.runs["done"]) == 0
    assert await w.count("github_check_runs", "run_id = %s", w.runs["done"]) == 0
    assert await w.count("github_check_runs", "run_id = %s", w.runs["unsent"]) == 1
    # "finished" and "parked" go; "waiting" is pending and "busy" has a running run
    assert {
        d for d in ("finished", "waiting", "busy", "parked") if await w.count("event_log", "delivery_id = %s", d)
    } == {"waiting", "busy"}
    assert await w.count("delivery_inbox", "state = 'pending'") == 1
    assert await w.count("execution_runs", "run_id = %s AND event_log_id IS NULL", w.runs["unsent"]) == 1

    assert deleted("payloads") - before["payloads"] == 2
    assert deleted("runs") - before["runs"] == 1 and deleted("steps") - before["steps"] == 2
    assert deleted("event_log") - before["event_log"] == 2
    assert await scalar(database, "SELECT instance_id FROM cluster_duties WHERE duty = 'retention'") == "proc-a"

    clock.advance(365 * DAY)  # a year later, nothing unfinished has moved
    report = await sweeper.sweep_now()
    assert report.counts["runs"] == 0 and report.counts["event_log"] == 0
    assert await w.count("execution_runs", "status = 'running'") == 1


async def test_dry_run_counts_what_the_sweep_then_removes_and_deletes_nothing(database: Database) -> None:
    w, clock, sweeper = await build(database)
    clock.advance(91 * DAY)
    tables = ("event_log", "execution_runs", "execution_jobs", "log_chunks", "github_check_runs")
    counts = {t: await w.count(t) for t in tables}
    objects = dict(w.blobs.objects)
    dry = await sweeper.sweep_now(dry_run=True)
    assert {t: await w.count(t) for t in tables} == counts and w.blobs.objects == objects
    body = report_json(dry)
    assert body["dryRun"] is True and body["cutoffs"] == {
        "payloads": "2026-05-01T12:00:00Z",
        "logs": "2026-05-01T12:00:00Z",
        "runs": "2026-03-02T12:00:00Z",
        "eventLog": "2026-03-02T12:00:00Z",
    }  # now = T0 + 91 days = 2026-05-31
    real = await sweeper.sweep_now()
    assert dry.counts == real.counts
    assert real.counts["runs"] == 1 and real.counts["event_log"] == 2 and real.counts["payloads"] == 2


async def test_one_process_sweeps_at_a_time_and_zero_days_keeps_a_kind(database: Database, second_db: Database) -> None:
    w, clock, sweeper = await build(database)
    clock.advance(91 * DAY)
    async with singletons.hold(second_db, "retention", "proc-b") as other:
        assert other
        with pytest.raises(errors.Conflict):
            await sweeper.sweep_now()
        assert (await sweeper.sweep_now(dry_run=True)).counts["runs"] == 1  # counting needs no lock
    assert await scalar(database, "SELECT instance_id FROM cluster_duties WHERE duty = 'retention'") == "proc-b"
    keep_runs = RetentionSweeper(
        db=database,
        store=PgRetention(database, w.blobs),
        policy=RetentionPolicy(run_days=0, event_log_days=0),
        instance_id="proc-a",
        clock=clock.now,
    )
    report = await keep_runs.sweep_now()
    assert report.counts["runs"] == 0 and report.counts["event_log"] == 0 and report.counts["payloads"] == 2
    assert report_json(report)["cutoffs"]["runs"] is None  # type: ignore[index]
