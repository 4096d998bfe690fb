"""DeliveryInbox + EventLog contract: the fake and PgDeliveryInbox behave the same."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from kici_core import errors
from kici_core.delivery_records import Delivery, DeliveryOutcome, EventLogEntry, EventLogQuery, InboxItem
from kici_core.keys import event_log_payload_key
from kici_core.run_records import NewRun
from tests.contract.conftest import SMALL_LIMIT, FakeInboxHarness, PgInboxHarness
from tests.support.new_runs import new_job
from tests.support.new_runs import new_run as shared_new_run

pytestmark = pytest.mark.anyio

Harness = FakeInboxHarness | PgInboxHarness
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def delivery(
    n: int,
    *,
    org: str = "acme",
    delivery_id: str | None = None,
    event: str = "push",
    action: str | None = None,
    routing_key: str = "github:1",
    body: bytes | None = None,
) -> Delivery:
    return Delivery(
        org_id=org,
        delivery_id=delivery_id or f"d-{n}",
        routing_key=routing_key,
        event=event,
        action=action,
        source="direct",
        provider="github",
        body=body if body is not None else b'{"n": %d}' % n,
        received_at=T0 + timedelta(seconds=n),
        repo_identifier="acme/app",
        ref="refs/heads/main",
    )


def new_run(workflow: str, *, run_id: str | None = None) -> NewRun:
    build = new_job("build", runs_on=({"kind": "exact", "value": "linux"},))
    test = new_job("test", needs=("build",), matrix_values={"py": "3.12"})
    return shared_new_run(build, test, workflow=workflow, run_id=run_id, trigger_decision={"matched": True})


PROCESSED = DeliveryOutcome(
    status="processed",
    matched_count=2,
    repo_identifier="acme/app",
    ref="refs/heads/main",
    decision_trace=[{"workflow": "ci", "matched": True}],
)


async def claim_one(h: Harness, worker: str = "w1") -> InboxItem:
    items = await h.inbox.claim(worker_id=worker, limit=10, lease_seconds=60)
    assert len(items) == 1
    return items[0]


# ------------------------------------------------------------------------------------------ accept
async def test_accept_stores_body_and_received_entry(inbox_h: Harness) -> None:
    d = delivery(1, action="opened")
    assert (await inbox_h.inbox.accept(d)).duplicate is False
    key = event_log_payload_key("acme", "d-1")
    assert await inbox_h.inbox.payload("acme", "d-1") == d.body
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None
    assert (entry.status, entry.payload_key, entry.payload_omitted, entry.payload_omitted_reason) == (
        "received",
        key,
        False,
        None,
    )
    assert entry.payload_hash == hashlib.sha256(d.body).hexdigest()
    assert entry.payload_size_bytes == len(d.body)
    assert (entry.event, entry.action, entry.source, entry.provider) == ("push", "opened", "direct", "github")
    assert (entry.repo_identifier, entry.ref, entry.run_id, entry.matched_count) == (
        "acme/app",
        "refs/heads/main",
        None,
        0,
    )
    assert entry.received_at == d.received_at
    assert await inbox_h.inbox.depth() == 1


async def test_duplicate_writes_nothing(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    again = delivery(2, delivery_id="d-1", event="pull_request")
    assert (await inbox_h.inbox.accept(again)).duplicate is True
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None and entry.event == "push"
    assert await inbox_h.inbox.depth() == 1
    # the same delivery id in another org is a different delivery
    assert (await inbox_h.inbox.accept(delivery(3, org="other", delivery_id="d-1"))).duplicate is False
    assert await inbox_h.inbox.depth() == 2


async def test_oversized_body_is_accepted_without_object(inbox_h: Harness) -> None:
    body = b"x" * (SMALL_LIMIT + 1)
    assert (await inbox_h.inbox.accept(delivery(1, body=body))).duplicate is False
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None
    assert (entry.payload_key, entry.payload_omitted, entry.payload_omitted_reason) == (None, True, "size_exceeded")
    assert entry.payload_size_bytes == len(body)
    assert inbox_h.blobs.objects == {}
    assert await inbox_h.inbox.payload("acme", "d-1") is None
    item = await claim_one(inbox_h)
    with pytest.raises(errors.NotFound):
        await inbox_h.inbox.payload(item)


async def test_object_storage_down_does_not_affect_acceptance(inbox_h: Harness) -> None:
    # decision 2 with one commit: the body is durable in the database, object storage is not on the path
    inbox_h.blobs.fail_puts = True
    d = delivery(1)
    assert (await inbox_h.inbox.accept(d)).duplicate is False
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None
    assert (entry.payload_key, entry.payload_omitted, entry.payload_omitted_reason) == (
        event_log_payload_key("acme", "d-1"),
        False,
        None,
    )
    assert await inbox_h.inbox.payload(await claim_one(inbox_h)) == d.body
    assert await inbox_h.inbox.depth() == 1


# ------------------------------------------------------------------------------------------ claim
async def test_claim_oldest_first_with_limit_and_lease(inbox_h: Harness) -> None:
    for n in range(3):
        await inbox_h.inbox.accept(delivery(n))
    first = await inbox_h.inbox.claim(worker_id="w1", limit=2, lease_seconds=60)
    assert [i.delivery_id for i in first] == ["d-0", "d-1"]
    assert all(i.attempts == 1 for i in first)
    assert await inbox_h.inbox.payload(first[0]) == b'{"n": 0}'
    rest = await inbox_h.inbox.claim(worker_id="w2", limit=10, lease_seconds=60)
    assert [i.delivery_id for i in rest] == ["d-2"]
    assert await inbox_h.inbox.claim(worker_id="w3", limit=10, lease_seconds=60) == []
    assert await inbox_h.inbox.depth() == 3  # leased rows are still unfinished
    assert await inbox_h.inbox.claim(worker_id="w3", limit=0, lease_seconds=60) == []


async def test_expired_lease_is_claimable_again(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    assert (await claim_one(inbox_h, "w1")).attempts == 1
    await inbox_h.expire_leases()
    again = await claim_one(inbox_h, "w2")
    assert again.attempts == 2
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None and entry.attempts == 2


async def test_restarted_worker_releases_its_own_leases(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    assert (await claim_one(inbox_h, "host:4000")).delivery_id == "d-1"
    await inbox_h.inbox.accept(delivery(2))
    assert (await claim_one(inbox_h, "other:4000")).delivery_id == "d-2"
    assert await inbox_h.inbox.claim(worker_id="host:4000", limit=10, lease_seconds=60) == []
    # the process restarts with the same worker id: only its own lease is freed, at once
    assert await inbox_h.inbox.release_leases("host:4000") == 1
    again = await inbox_h.inbox.claim(worker_id="host:4000", limit=10, lease_seconds=60)
    assert [i.delivery_id for i in again] == ["d-1"] and again[0].attempts == 2
    assert await inbox_h.inbox.release_leases("nobody") == 0


# ------------------------------------------------------------------------------------------ complete
async def test_complete_creates_runs_once(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    item = await claim_one(inbox_h)
    ci, docs = new_run("ci"), new_run("docs")
    assert await inbox_h.inbox.complete(item, PROCESSED, [ci, docs]) == [ci.run_id, docs.run_id]
    assert await inbox_h.queued_job_ids() == [ci.jobs[0].job_id, docs.jobs[0].job_id]  # runnable jobs only
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None
    assert (entry.status, entry.matched_count, entry.run_id) == ("processed", 2, ci.run_id)
    assert entry.decision_trace == [{"workflow": "ci", "matched": True}]
    assert await inbox_h.inbox.depth() == 0
    assert await inbox_h.inbox.claim(worker_id="w", limit=10, lease_seconds=60) == []

    # crash + replay: processing runs again with fresh ids; nothing new is created
    assert await inbox_h.inbox.replay("acme", "d-1") is True
    again = await claim_one(inbox_h)
    assert again.attempts == 1
    rerun = [new_run("ci"), new_run("docs"), new_run("release")]
    ids = await inbox_h.inbox.complete(again, PROCESSED, rerun)
    assert ids == [ci.run_id, docs.run_id, rerun[2].run_id]
    assert await inbox_h.run_workflows("acme", "d-1") == {
        "ci": ci.run_id,
        "docs": docs.run_id,
        "release": rerun[2].run_id,
    }
    assert len(await inbox_h.queued_job_ids()) == 3


async def test_terminal_outcome_is_not_overwritten_except_failed(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    await inbox_h.inbox.complete(await claim_one(inbox_h), PROCESSED, [])
    await inbox_h.inbox.replay("acme", "d-1")
    missing = DeliveryOutcome(status="lockfile_missing", repo_identifier="acme/app", ref="refs/heads/main")
    await inbox_h.inbox.complete(await claim_one(inbox_h), missing, [])
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None and (entry.status, entry.matched_count) == ("processed", 2)

    await inbox_h.inbox.accept(delivery(2))
    await inbox_h.inbox.fail(await claim_one(inbox_h), "boom", retry_after=None)
    await inbox_h.inbox.replay("acme", "d-2")
    await inbox_h.inbox.complete(await claim_one(inbox_h), PROCESSED, [])
    entry = await inbox_h.inbox.get("acme", "d-2")
    assert entry is not None and (entry.status, entry.error_message) == ("processed", None)


# ------------------------------------------------------------------------------------------ fail / replay
async def test_fail_with_retry_waits_then_returns(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    await inbox_h.inbox.fail(await claim_one(inbox_h), "github down", retry_after=3600)
    assert await inbox_h.inbox.claim(worker_id="w", limit=10, lease_seconds=60) == []
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None and (entry.status, entry.error_message) == ("received", "github down")
    assert await inbox_h.inbox.depth() == 1
    await inbox_h.make_due()
    assert (await claim_one(inbox_h)).attempts == 2


async def test_fail_without_retry_parks_until_replay(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1))
    await inbox_h.inbox.fail(await claim_one(inbox_h), "bad lock file", retry_after=None)
    entry = await inbox_h.inbox.get("acme", "d-1")
    assert entry is not None and (entry.status, entry.error_message) == ("failed", "bad lock file")
    assert await inbox_h.inbox.depth() == 0
    assert await inbox_h.inbox.claim(worker_id="w", limit=10, lease_seconds=60) == []
    assert await inbox_h.inbox.replay("acme", "d-1") is True
    assert await inbox_h.inbox.depth() == 1
    assert (await claim_one(inbox_h)).attempts == 1


async def test_replay_unknown_is_false(inbox_h: Harness) -> None:
    assert await inbox_h.inbox.replay("acme", "nope") is False


# ------------------------------------------------------------------------------------------ event log
async def test_event_log_filters_and_paging(inbox_h: Harness) -> None:
    await inbox_h.inbox.accept(delivery(1, delivery_id="gh-aaa"))
    await inbox_h.inbox.accept(delivery(2, delivery_id="gh-bbb", event="pull_request", action="opened"))
    await inbox_h.inbox.accept(delivery(3, delivery_id="gen-ccc", routing_key="generic:acme:x"))
    await inbox_h.inbox.accept(delivery(4, org="other", delivery_id="gh-aaa"))
    log = inbox_h.inbox

    entries, total = await log.list(EventLogQuery())
    assert total == 4
    assert [(e.org_id, e.delivery_id) for e in entries] == [
        ("other", "gh-aaa"),
        ("acme", "gen-ccc"),
        ("acme", "gh-bbb"),
        ("acme", "gh-aaa"),
    ]

    def ids(result: tuple[list[EventLogEntry], int]) -> tuple[list[str], int]:
        return [e.delivery_id for e in result[0]], result[1]

    assert ids(await log.list(EventLogQuery(org_id="acme", limit=2))) == (["gen-ccc", "gh-bbb"], 3)
    assert ids(await log.list(EventLogQuery(org_id="acme", limit=2, offset=2))) == (["gh-aaa"], 3)
    assert ids(await log.list(EventLogQuery(org_id="acme", offset=10))) == ([], 3)
    assert ids(await log.list(EventLogQuery(routing_key="generic:acme:x"))) == (["gen-ccc"], 1)
    assert ids(await log.list(EventLogQuery(event="pull_request", action="opened"))) == (["gh-bbb"], 1)
    assert ids(await log.list(EventLogQuery(delivery_id_contains="h-a"))) == (["gh-aaa", "gh-aaa"], 2)
    exact = await log.list(EventLogQuery(delivery_id="gh-aaa"))
    assert [(e.org_id, e.delivery_id) for e in exact[0]] == [("other", "gh-aaa"), ("acme", "gh-aaa")]
    assert ids(await log.list(EventLogQuery(delivery_id="gh-a"))) == ([], 0)  # exact, not a substring
    window = EventLogQuery(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4))
    assert ids(await log.list(window)) == (["gen-ccc", "gh-bbb"], 2)

    await log.fail(await claim_one_of(inbox_h, "gh-bbb"), "x", retry_after=None)
    assert ids(await log.list(EventLogQuery(status="failed"))) == (["gh-bbb"], 1)

    newest = await log.get(None, "gh-aaa")
    assert newest is not None and newest.org_id == "other"
    assert await log.get("acme", "missing") is None


async def claim_one_of(h: Harness, delivery_id: str) -> InboxItem:
    items = await h.inbox.claim(worker_id="w", limit=10, lease_seconds=60)
    (item,) = [i for i in items if i.delivery_id == delivery_id]
    return item
