"""What ``PgDeliveryInbox.complete`` writes: runs, jobs, needs edges, dispatch rows, and the notification."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from kici_adapters.platform import messages
from kici_adapters.postgres.dispatch import PgDispatchQueue
from kici_adapters.postgres.inbox import LaneConnections, PgDeliveryInbox, split_matchers
from kici_adapters.postgres.pool import Database
from kici_core import errors, platform_events
from kici_core.delivery_records import Delivery, DeliveryOutcome
from kici_core.run_records import NeedEdge, NewJob, NewRun
from kici_core.testing import fakes
from tests.support.new_runs import new_job, new_run

pytestmark = pytest.mark.anyio


async def rows(db: Database, sql: Any) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        cur = await conn.execute(sql)
        return list(await cur.fetchall())


def test_split_matchers_keeps_order() -> None:
    exact, patterns = split_matchers(
        [
            {"kind": "exact", "value": "linux"},
            {"kind": "regex", "source": "^gpu-", "flags": "i"},
            {"kind": "exact", "value": "x"},
        ]
    )
    assert exact == ["linux", "x"]
    assert patterns == [{"kind": "regex", "source": "^gpu-", "flags": "i"}]


async def test_complete_writes_the_run_graph_and_notifies(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(
        Delivery(
            org_id="acme",
            delivery_id="d1",
            routing_key="github:1",
            event="push",
            action=None,
            source="direct",
            provider="github",
            body=b"{}",
            received_at=datetime.now(UTC),
        )
    )
    (item,) = await inbox.claim(worker_id="w", limit=1, lease_seconds=60)
    build = NewJob(
        job_id=str(uuid.uuid4()),
        name="build (py=3.12)",
        base_name="build",
        matrix_values={"py": "3.12"},
        needs=(),
        runs_on=({"kind": "exact", "value": "linux"}, {"kind": "regex", "source": "^x86", "flags": ""}),
        exclude_labels=({"kind": "exact", "value": "slow"}, {"kind": "regex", "source": "arm", "flags": "i"}),
        job_config={"name": "build (py=3.12)", "steps": [{"run": "make"}]},
        runnable=True,
    )
    deploy = NewJob(
        job_id=str(uuid.uuid4()),
        name="deploy",
        base_name="deploy",
        matrix_values=None,
        needs=(NeedEdge(upstream_name="build (py=3.12)", run_on=("success", "skipped")),),
        runs_on=(),
        exclude_labels=(),
        job_config={"name": "deploy"},
        runnable=False,
    )
    broken = NewJob(
        job_id=str(uuid.uuid4()),
        name="broken",
        base_name="broken",
        matrix_values=None,
        needs=(),
        runs_on=(),
        exclude_labels=(),
        job_config={},
        runnable=False,
        status="failed",
        reason="matrix expansion failed",
    )
    run = NewRun(
        run_id=str(uuid.uuid4()),
        workflow_name="ci",
        provider="github",
        routing_key="github:1",
        repo_identifier="acme/app",
        repo_url="https://example.test/acme/app.git",
        ref="refs/heads/main",
        sha="b" * 40,
        trigger_decision={"trigger": "push"},
        jobs=(build, deploy, broken),
    )

    async with database.dedicated() as listener:
        await listener.execute("LISTEN kici_jobs")
        ids = await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=1), [run])
        with anyio.fail_after(10):
            note = await anext(listener.notifies())
    assert note.channel == "kici_jobs" and note.payload == run.run_id
    assert ids == [run.run_id]

    (r,) = await rows(database, "SELECT * FROM execution_runs")
    assert (str(r["run_id"]), r["workflow_name"], r["status"], r["sha"], r["trigger_decision"]) == (
        run.run_id,
        "ci",
        "pending",
        "b" * 40,
        {"trigger": "push"},
    )
    jobs = {j["job_name"]: j for j in await rows(database, "SELECT * FROM execution_jobs")}
    assert jobs["build (py=3.12)"]["required_labels"] == ["linux"]
    assert jobs["build (py=3.12)"]["matrix_values"] == {"py": "3.12"}
    assert jobs["build (py=3.12)"]["needs_satisfied"] is True
    assert (jobs["broken"]["status"], jobs["broken"]["error_message"]) == ("failed", "matrix expansion failed")
    needs = await rows(database, "SELECT job_name, upstream_name, run_on FROM execution_job_needs")
    assert needs == [{"job_name": "deploy", "upstream_name": "build (py=3.12)", "run_on": ["success", "skipped"]}]

    (q,) = await rows(database, "SELECT * FROM dispatch_queue")
    assert str(q["id"]) == build.job_id and q["status"] == "pending"
    assert q["runs_on_labels"] == ["linux"]
    assert q["runs_on_patterns"] == [{"kind": "regex", "source": "^x86", "flags": ""}]
    assert q["exclude_labels"] == ["slow"]
    assert q["exclude_patterns"] == [{"kind": "regex", "source": "arm", "flags": "i"}]
    assert q["required_labels"] == ["linux"]
    assert (q["workflow_name"], q["job_name"], q["delivery_id"], q["repo_url"]) == (
        "ci",
        "build (py=3.12)",
        "d1",
        "https://example.test/acme/app.git",
    )
    (e,) = await rows(database, "SELECT status, run_id, processed_at FROM event_log")
    assert e["status"] == "processed" and str(e["run_id"]) == run.run_id and e["processed_at"] is not None


def _run(workflow: str) -> NewRun:
    return new_run(new_job(), workflow=workflow, sha="c" * 40, trigger_decision=None)


async def _accept_and_claim(inbox: PgDeliveryInbox, delivery: str) -> Any:
    await inbox.accept(
        Delivery(
            org_id="acme",
            delivery_id=delivery,
            routing_key="github:1",
            event="push",
            action=None,
            source="direct",
            provider="github",
            body=b"{}",
            received_at=datetime.now(UTC),
        )
    )
    (item,) = await inbox.claim(worker_id="w", limit=1, lease_seconds=60)
    return item


async def test_the_notification_names_every_run_the_delivery_queued(database: Database) -> None:
    """Dispatchers read rows by the ids a notification names, so a transaction that committed after a later
    queue position was read is still found: every run of the delivery must be named."""
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    item = await _accept_and_claim(inbox, "multi")
    runs = [_run(f"wf-{i}") for i in range(3)]
    async with database.dedicated() as listener:
        await listener.execute("LISTEN kici_jobs")
        ids = await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=3), runs)
        with anyio.fail_after(10):
            note = await anext(listener.notifies())
    assert set(note.payload.split(",")) == {r.run_id for r in runs} == set(ids)


async def test_a_delivery_that_queues_nothing_does_not_wake_dispatchers(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    item = await _accept_and_claim(inbox, "nothing")
    async with database.dedicated() as listener:
        await listener.execute("LISTEN kici_jobs")
        assert await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=0), []) == []
        await listener.execute("SELECT pg_notify('kici_jobs', 'marker')")  # delivered after anything complete sent
        with anyio.fail_after(10):
            note = await anext(listener.notifies())
    assert note.payload == "marker"


async def test_a_delivery_queueing_more_runs_than_a_notification_holds_notifies_anonymously(database: Database) -> None:
    """pg_notify payloads stop at 8000 bytes: past that, the notification names nothing and dispatchers re-read
    recent queue positions instead."""
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    item = await _accept_and_claim(inbox, "many")
    runs = [_run(f"wf-{i}") for i in range(8000 // 37 + 1)]
    async with database.dedicated() as listener:
        await listener.execute("LISTEN kici_jobs")
        ids = await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=len(runs)), runs)
        with anyio.fail_after(10):
            note = await anext(listener.notifies())
    assert note.payload == ""
    assert ids == [r.run_id for r in runs]  # the delivery's runs, in the order they were planned
    queued = await rows(database, "SELECT run_id FROM dispatch_queue ORDER BY seq")
    assert [str(r["run_id"]) for r in queued] == ids


async def test_completing_again_creates_nothing_and_returns_the_existing_runs(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    item = await _accept_and_claim(inbox, "again")
    first = [_run("a"), _run("b")]
    ids = await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=2), first)
    assert ids == [r.run_id for r in first]
    # a reprocessing plans fresh run ids for the same workflows (plus one more): only the new workflow is added
    again = [_run("a"), _run("b"), _run("c")]
    ids2 = await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=3), again)
    assert ids2 == [first[0].run_id, first[1].run_id, again[2].run_id]
    jobs = await rows(database, "SELECT count(*) AS n FROM execution_jobs")
    assert jobs[0]["n"] == 3


async def test_completing_an_unknown_delivery_is_not_found(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    item = await _accept_and_claim(inbox, "known")
    async with database.connection() as conn:
        await conn.execute("DELETE FROM delivery_inbox")
        await conn.execute("DELETE FROM event_log")
    with pytest.raises(errors.NotFound):
        await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=1), [_run("a")])
    assert await rows(database, "SELECT run_id FROM execution_runs") == []


async def test_warm_opens_the_lane_connections_ahead_of_time(database: Database) -> None:
    lanes = LaneConnections(database.url)
    try:
        assert await lanes.warm(3) == 3
        assert await lanes.warm(3) == 0  # already warm: nothing more is opened
        pids: set[int] = set()
        async with lanes.connection() as a, lanes.connection() as b, lanes.connection() as c:
            pids = {a.info.backend_pid, b.info.backend_pid, c.info.backend_pid}
        assert len(pids) == 3
        assert await lanes.warm(3) == 0  # the three were the warm ones, back in the idle list
    finally:
        await lanes.aclose()


def _run_with_jobs(workflow: str, names: list[str], event: dict[str, Any]) -> NewRun:
    return new_run(
        *(new_job(n, job_config={"name": n, "steps": []}) for n in names),
        workflow=workflow,
        ref="feature/x",
        sha="d" * 40,
        trigger_decision={},
        event=event,
    )


async def test_the_event_is_stored_once_per_run_and_read_once_per_run_when_jobs_are_claimed(database: Database) -> None:
    event = {
        "type": "pull_request",
        "action": "opened",
        "targetBranch": "main",
        "sourceBranch": "feature/x",
        "provider": "github",
        "payload": {"number": 7, "body": "x" * 4096},
    }
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore(), forward=True)
    item = await _accept_and_claim(inbox, "with-event")
    runs = [_run_with_jobs("checks", ["a", "b", "c"], event), _run_with_jobs("docs", ["d"], event)]
    await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=2), runs)
    stored = await rows(database, "SELECT run_id, event FROM execution_run_events")
    assert {str(r["run_id"]): r["event"] for r in stored} == {r.run_id: event for r in runs}
    in_jobs = await rows(database, "SELECT count(*) AS n FROM execution_jobs WHERE job_config ? 'event'")
    in_queue = await rows(database, "SELECT count(*) AS n FROM dispatch_queue WHERE job_config ? 'event'")
    assert in_jobs[0]["n"] == in_queue[0]["n"] == 0

    queue = PgDispatchQueue(database)
    try:
        claimed = await queue.claim_many([(j.job_id, "agent-1", time.time() + 30) for r in runs for j in r.jobs])
        assert len(claimed) == 4 and all(row.event == event for row in claimed.values())
    finally:
        await queue.aclose()

    # platform/hybrid: each new run was announced to the Platform in the same commit
    outbox = await rows(database, "SELECT kind, payload FROM platform_outbox ORDER BY seq")
    assert [o["kind"] for o in outbox] == ["run_status", "run_status"]
    stored = platform_events.from_record(outbox[0]["kind"], outbox[0]["payload"])
    assert isinstance(stored, platform_events.RunStatusChanged)
    first = messages.frame(outbox[0]["kind"], outbox[0]["payload"], message_id=str(uuid.uuid4()), timestamp_ms=1)
    assert first["type"] == "execution.status"
    assert first["runId"] == runs[0].run_id and first["status"] == "pending" and first["jobCount"] == 3
    assert (first["sha"], first["ref"], first["workflowName"], first["triggerEvent"]) == (
        "d" * 40,
        "feature/x",
        "checks",
        "push",
    )
    assert isinstance(first["startedAt"], int) and len(first["messageId"]) == 36

    # completing again creates nothing: no second event row, no second announcement
    again = [_run_with_jobs("checks", ["a"], event)]
    await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=2), again)
    assert len(await rows(database, "SELECT run_id FROM execution_run_events")) == 2
    assert len(await rows(database, "SELECT seq FROM platform_outbox")) == 2


async def test_without_forwarding_no_status_is_written_for_the_platform(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    item = await _accept_and_claim(inbox, "independent")
    await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=1), [_run("ci")])
    assert await rows(database, "SELECT seq FROM platform_outbox") == []
    assert await rows(database, "SELECT run_id FROM execution_run_events") == []  # a run without an event
