"""The poison-pill rule in PostgreSQL: a delivery whose processing crashed or timed out 3 times (an expired lease,
a lease released by a restarted worker, or a processing timeout) is parked ``failed`` with the reason by the
claim query, never leased again until replayed, while the deliveries around it are claimed as usual."""

from __future__ import annotations

import pytest

from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.pool import Database
from kici_core.delivery_records import MAX_CRASHES
from kici_core.testing import fakes
from tests.integration.test_inbox_reliability import delivery

pytestmark = pytest.mark.anyio


async def _expire_leases(database: Database) -> None:
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE delivery_inbox SET locked_until = now() - interval '1 second' WHERE locked_until IS NOT NULL"
        )


async def test_expired_and_released_leases_count_crashes_and_park_the_delivery(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(delivery(1, delivery_id="poison"))
    # crash 1: the lease expires; crash 2: a restarted worker releases it; crash 3: processing timed out
    (item,) = await inbox.claim(worker_id="w", limit=5, lease_seconds=60)
    await _expire_leases(database)
    (item,) = await inbox.claim(worker_id="w", limit=5, lease_seconds=60)
    assert item.attempts == 2
    assert await inbox.release_leases("w") == 1
    (item,) = await inbox.claim(worker_id="w", limit=5, lease_seconds=60)
    await inbox.fail(item, "ProcessingTimeout: matching ran past its time budget of 60 s", retry_after=0, crashed=True)
    await inbox.accept(delivery(2, delivery_id="ordinary"))
    claimed = await inbox.claim(worker_id="w", limit=5, lease_seconds=60)
    assert [i.delivery_id for i in claimed] == ["ordinary"]
    entry = await inbox.get("acme", "poison")
    assert entry is not None and entry.status == "failed"
    assert entry.error_message == (
        f"processing crashed or timed out {MAX_CRASHES} times; parked (replay it once "
        "the cause is fixed); last error: ProcessingTimeout: matching ran past its time "
        "budget of 60 s"
    )
    assert await inbox.claim(worker_id="w", limit=5, lease_seconds=60) == []

    # replay gives it a fresh start
    assert await inbox.replay("acme", "poison")
    (again,) = await inbox.claim(worker_id="w", limit=5, lease_seconds=60)
    assert again.delivery_id == "poison" and again.attempts == 1


async def test_ordinary_retries_are_not_crashes(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(delivery(1, delivery_id="flaky"))
    for _ in range(MAX_CRASHES + 2):  # GitHub down: retried with a backoff, never parked as a poison pill
        (item,) = await inbox.claim(worker_id="w", limit=1, lease_seconds=60)
        await inbox.fail(item, "UpstreamUnavailable: GitHub answered 502", retry_after=0)
    entry = await inbox.get("acme", "flaky")
    assert entry is not None and entry.status == "received"
