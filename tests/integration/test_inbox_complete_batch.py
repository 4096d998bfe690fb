"""Concurrent ``PgDeliveryInbox.complete`` calls share transactions without sharing fates: each delivery gets
its own runs (one per workflow, however often it is completed), a completion the database rejects fails only
its own caller, and a delivery completed in a batch is finished like one completed alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.pool import Database
from kici_core import errors
from kici_core.delivery_records import Delivery, DeliveryOutcome, InboxItem
from kici_core.run_records import NewRun
from kici_core.testing import fakes
from tests.support.new_runs import new_job, new_run
from tests.support.pg import scalar

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(workflow: str, *, config: dict[str, str] | None = None) -> NewRun:
    build = new_job(runs_on=({"kind": "exact", "value": "linux"},), job_config={"name": "build", **(config or {})})
    return new_run(build, workflow=workflow, sha="c" * 40, trigger_decision={"workflowName": workflow, "matched": True})


async def _accepted(inbox: PgDeliveryInbox, count: int) -> list[InboxItem]:
    for n in range(count):
        await inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id=f"batch-{n}",
                routing_key="github:1",
                event="push",
                action=None,
                source="direct",
                provider="github",
                body=b'{"n": %d}' % n,
                received_at=T0 + timedelta(milliseconds=n),
            )
        )
    items = await inbox.claim(worker_id="w", limit=count, lease_seconds=60)
    assert len(items) == count, f"claimed {len(items)} of {count} accepted deliveries"
    return sorted(items, key=lambda i: i.delivery_id)


async def test_concurrent_completions_share_commits_and_each_gets_its_own_runs(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    items = await _accepted(inbox, 40)
    planned = {item.delivery_id: [_run("ci"), _run("lint")] for item in items}
    got: dict[str, list[str]] = {}

    async def complete(item: InboxItem) -> None:
        runs = planned[item.delivery_id]
        got[item.delivery_id] = await inbox.complete(
            item, DeliveryOutcome(status="processed", matched_count=2, decision_trace={"n": 1}), runs
        )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(complete, item)
    assert got == {d: [r.run_id for r in runs] for d, runs in planned.items()}
    completions = inbox._completions
    assert completions is not None and completions.batches < len(items), "no completion shared a transaction"
    assert await scalar(database, "SELECT count(*) FROM execution_runs") == 80
    assert await scalar(database, "SELECT count(*) FROM dispatch_queue") == 80
    assert (
        await scalar(
            database,
            "SELECT count(*) FROM event_log WHERE status = 'processed' "
            "AND decision_trace = '{\"n\": 1}'::jsonb AND processed_at IS NOT NULL",
        )
        == 40
    )
    assert await scalar(database, "SELECT count(*) FROM delivery_inbox WHERE state = 'done'") == 40


async def test_a_rejected_completion_fails_only_its_own_caller(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    items = await _accepted(inbox, 12)
    bad = items[5]
    outcomes: dict[str, object] = {}

    async def complete(item: InboxItem) -> None:
        # jsonb cannot hold a NUL character: the database rejects this delivery's statement
        runs = [_run("ci", config={"env": "a\x00b"} if item is bad else None)]
        try:
            outcomes[item.delivery_id] = await inbox.complete(
                item, DeliveryOutcome(status="processed", matched_count=1), runs
            )
        except errors.KiciError as exc:
            outcomes[item.delivery_id] = exc

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(complete, item)
    failed = outcomes.pop(bad.delivery_id)
    assert isinstance(failed, errors.InvalidInput), f"the rejected completion got {failed!r}"
    assert all(isinstance(v, list) and len(v) == 1 for v in outcomes.values()), outcomes
    assert await scalar(database, "SELECT count(*) FROM execution_runs") == 11
    assert await scalar(database, "SELECT count(*) FROM delivery_inbox WHERE state = 'done'") == 11
    # the rejected delivery is untouched: still pending under its lease, to be retried or parked
    assert (
        await scalar(
            database,
            "SELECT count(*) FROM delivery_inbox i JOIN event_log e ON e.id = i.event_log_id "
            f"WHERE e.delivery_id = '{bad.delivery_id}' AND i.state = 'pending'",
        )
        == 1
    )


async def test_one_delivery_completed_twice_in_one_batch_has_one_run_per_workflow(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    items = await _accepted(inbox, 6)
    results: dict[str, list[list[str]]] = {}

    async def complete(item: InboxItem) -> None:
        ids = await inbox.complete(item, DeliveryOutcome(status="processed", matched_count=1), [_run("ci")])
        results.setdefault(item.delivery_id, []).append(ids)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for item in [*items, items[3], items[3]]:  # a delivery processed again while its first completion runs
                tg.start_soon(complete, item)
    assert await scalar(database, "SELECT count(*) FROM execution_runs") == 6
    repeated = results[items[3].delivery_id]
    assert len(repeated) == 3 and len({tuple(ids) for ids in repeated}) == 1 and len(repeated[0]) == 1, repeated
    per_delivery = await scalar(
        database, "SELECT max(n) FROM (SELECT count(*) AS n FROM execution_runs GROUP BY delivery_id, workflow_name) c"
    )
    assert per_delivery == 1
