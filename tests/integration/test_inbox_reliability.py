"""Reliability of the PostgreSQL inbox under concurrency: one claim per delivery, disjoint leases, idempotent
completion."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
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


def delivery(n: int, *, delivery_id: str | None = None, routing_key: str = "github:1") -> Delivery:
    return Delivery(
        org_id="acme",
        delivery_id=delivery_id or f"d-{n}",
        routing_key=routing_key,
        event="push",
        action=None,
        source="relay",
        provider="github",
        body=b'{"n": %d}' % n,
        received_at=T0 + timedelta(milliseconds=n),
    )


def run(workflow: str) -> NewRun:
    return new_run(new_job(job_config={}), workflow=workflow, repo_url=None, trigger_decision={})


@pytest.mark.parametrize("group_commit", [True, False])
async def test_twenty_concurrent_copies_make_one_claim(database: Database, group_commit: bool) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore(), group_commit=group_commit)
    results: list[bool] = []

    async def send() -> None:
        results.append((await inbox.accept(delivery(1, delivery_id="same"))).duplicate)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(send)
    assert sorted(results) == [False] + [True] * 19
    assert await scalar(database, "SELECT count(*) FROM event_log") == 1
    assert await scalar(database, "SELECT count(*) FROM delivery_inbox") == 1


async def test_group_commit_shares_commits_and_answers_each_caller(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(delivery(0, delivery_id="old"))
    results: dict[str, bool] = {}

    async def send(n: int, delivery_id: str) -> None:
        results[f"{n}:{delivery_id}"] = (await inbox.accept(delivery(n, delivery_id=delivery_id))).duplicate

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(send, n, f"new-{n}")
            tg.start_soon(send, 99, "old")
    assert results.pop("99:old") is True
    assert set(results.values()) == {False}
    assert await scalar(database, "SELECT count(*) FROM delivery_inbox") == 41
    assert inbox.group is not None and inbox.group.batches < 41  # some commits carried several deliveries


async def test_a_rejected_row_fails_only_its_own_caller(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    outcomes: dict[int, str] = {}

    async def send(n: int) -> None:
        # PostgreSQL text cannot hold NUL: the database (driver) rejects this one row.
        d = delivery(n, routing_key="bad\x00key" if n == 5 else "github:1")
        try:
            outcomes[n] = "dup" if (await inbox.accept(d)).duplicate else "new"
        except errors.StorageUnavailable:
            outcomes[n] = "failed"

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(send, n)
    assert outcomes.pop(5) == "failed"
    assert set(outcomes.values()) == {"new"}
    assert await scalar(database, "SELECT count(*) FROM event_log") == 11


async def test_two_workers_never_claim_the_same_item(database: Database, second_db: Database) -> None:
    writer = PgDeliveryInbox(database, fakes.FakeBlobStore())
    for n in range(60):
        await writer.accept(delivery(n))
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    async def worker(name: str, db: Database) -> None:
        inbox = PgDeliveryInbox(db, fakes.FakeBlobStore())
        while items := await inbox.claim(worker_id=name, limit=3, lease_seconds=60):
            claimed[name].extend(i.delivery_id for i in items)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "a", database)
            tg.start_soon(worker, "b", second_db)
    assert not set(claimed["a"]) & set(claimed["b"])
    assert sorted(claimed["a"] + claimed["b"]) == sorted(f"d-{n}" for n in range(60))


async def test_completing_twice_leaves_one_run_per_workflow(database: Database, second_db: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(delivery(1))
    outcome = DeliveryOutcome(status="processed", matched_count=2)
    (first,) = await inbox.claim(worker_id="w1", limit=1, lease_seconds=60)
    ids = await inbox.complete(first, outcome, [run("ci"), run("docs")])

    # crash after commit, replay, process again with fresh ids
    assert await inbox.replay("acme", "d-1")
    (again,) = await inbox.claim(worker_id="w2", limit=1, lease_seconds=60)
    assert await inbox.complete(again, outcome, [run("ci"), run("docs")]) == ids

    # two workers finishing the same delivery at once (the first one's lease had expired)
    await inbox.replay("acme", "d-1")
    (item,) = await inbox.claim(worker_id="w3", limit=1, lease_seconds=60)
    other = PgDeliveryInbox(second_db, fakes.FakeBlobStore())
    answers: list[list[str]] = []

    async def finish(store: PgDeliveryInbox, it: InboxItem) -> None:
        answers.append(await store.complete(it, outcome, [run("ci"), run("docs"), run("lint")]))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(finish, inbox, item)
            tg.start_soon(finish, other, item)
    assert answers[0] == answers[1] and answers[0][:2] == ids and len(answers[0]) == 3
    assert await scalar(database, "SELECT count(*) FROM execution_runs") == 3
    assert await scalar(database, "SELECT count(*) FROM execution_jobs") == 3
    assert await scalar(database, "SELECT count(*) FROM dispatch_queue") == 3
    assert await inbox.depth() == 0


async def test_the_claim_brings_the_body_and_an_offloaded_body_is_read_from_storage(database: Database) -> None:
    blobs = fakes.FakeBlobStore()
    inbox = PgDeliveryInbox(database, blobs)
    await inbox.accept(delivery(1))
    await inbox.accept(delivery(2))
    (first,) = await inbox.claim(worker_id="w", limit=1, lease_seconds=60)
    assert first.delivery_id == "d-1"
    # the database copy goes away after the claim: the body that came with the claim is used
    async with database.connection() as conn:
        await conn.execute("DELETE FROM delivery_payloads")
    assert await inbox.payload(first) == b'{"n": 1}'
    # an item claimed after its body left the database reads the object
    (second,) = await inbox.claim(worker_id="w", limit=1, lease_seconds=60)
    assert second.payload_key is not None
    with pytest.raises(errors.NotFound):
        await inbox.payload(second)  # deleted above, never offloaded
    await blobs.put(second.payload_key, gzip.compress(b'{"n": 2}'))
    assert await inbox.payload(second) == b'{"n": 2}'


async def test_a_claim_commits_on_its_own_and_leaves_the_pooled_connection_transactional(db_url: str) -> None:
    # The claim runs as one autocommit statement on a pooled connection: its lease is committed when it returns,
    # and the connection goes back to the pool in its usual mode, so later work on it is still all-or-nothing.
    async with Database(db_url, min_size=1, max_size=1) as single:
        inbox = PgDeliveryInbox(single, fakes.FakeBlobStore())
        await inbox.accept(delivery(1, delivery_id="leased"))
        (item,) = await inbox.claim(worker_id="w", limit=5, lease_seconds=60)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as other:
            cur = await other.execute("SELECT locked_by FROM delivery_inbox")
            assert await cur.fetchall() == [("w",)]
        with pytest.raises(RuntimeError):
            async with single.connection() as conn:  # the pool's only connection: the one the claim used
                await conn.execute("UPDATE delivery_inbox SET last_error = 'not kept'")
                raise RuntimeError("rolled back")
        async with single.connection() as conn:
            cur = await conn.execute("SELECT last_error FROM delivery_inbox")
            assert await cur.fetchall() == [{"last_error": None}]
    assert item.delivery_id == "leased"
