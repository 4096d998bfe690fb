"""Payload durability and offloading, fake and PostgreSQL alike: an accepted body is readable at once (from the
database copy), the offloader moves it to object storage under its ``payload_key``, and a failed object write
loses nothing and is retried."""

from __future__ import annotations

import gzip

import pytest

from kici_adapters.postgres.offload import PayloadOffloader
from kici_core import errors
from kici_core.keys import event_log_payload_key
from tests.contract.conftest import FakeInboxHarness, PgInboxHarness
from tests.contract.test_inbox_contract import claim_one, delivery

pytestmark = pytest.mark.anyio

Harness = FakeInboxHarness | PgInboxHarness


def by_hand(h: Harness) -> Harness:
    """Offload only when the test says so (the fake otherwise offloads after each accept)."""
    if isinstance(h, FakeInboxHarness):
        h.inbox.offload_on_accept = False
    return h


async def offload(h: Harness) -> tuple[int, int]:
    """One offload pass: (moved, failed)."""
    if isinstance(h, FakeInboxHarness):
        return await h.inbox.offload()
    result = await PayloadOffloader(h.db, h.blobs).run_once()
    return result.moved, result.failed


async def test_payload_readable_before_and_after_offload(inbox_h: Harness) -> None:
    h = by_hand(inbox_h)
    d = delivery(1)
    await h.inbox.accept(d)
    key = event_log_payload_key("acme", "d-1")
    assert h.blobs.objects == {}  # accepted without touching object storage
    item = await claim_one(h)
    assert item.payload_key == key
    assert await h.inbox.payload(item) == d.body
    assert await h.inbox.payload("acme", "d-1") == d.body

    assert await offload(h) == (1, 0)
    assert gzip.decompress(h.blobs.objects[key]) == d.body
    assert await offload(h) == (0, 0)  # the database copy is gone
    assert await h.inbox.payload(item) == d.body
    assert await h.inbox.payload("acme", "d-1") == d.body


async def test_blob_failure_during_offload_loses_nothing_and_is_retried(inbox_h: Harness) -> None:
    h = by_hand(inbox_h)
    for n in range(3):
        await h.inbox.accept(delivery(n))
    h.blobs.fail_puts = True
    assert await offload(h) == (0, 3)
    assert await offload(h) == (0, 3)
    for n in range(3):
        assert await h.inbox.payload("acme", f"d-{n}") == b'{"n": %d}' % n
    h.blobs.fail_puts = False
    assert await offload(h) == (3, 0)
    assert sorted(h.blobs.objects) == sorted(event_log_payload_key("acme", f"d-{n}") for n in range(3))
    for n in range(3):
        assert await h.inbox.payload("acme", f"d-{n}") == b'{"n": %d}' % n


async def test_missing_object_after_offload_is_not_found(inbox_h: Harness) -> None:
    h = by_hand(inbox_h)
    await h.inbox.accept(delivery(1))
    await offload(h)
    h.blobs.objects.clear()  # e.g. removed by retention
    with pytest.raises(errors.NotFound):
        await h.inbox.payload("acme", "d-1")
    with pytest.raises(errors.NotFound):
        await h.inbox.payload(await claim_one(h))


async def test_event_log_payload_of_unknown_delivery_is_none(inbox_h: Harness) -> None:
    assert await inbox_h.inbox.payload("acme", "nope") is None
    await inbox_h.inbox.accept(delivery(1))
    assert await inbox_h.inbox.payload("other", "d-1") is None


async def test_duplicate_does_not_replace_the_stored_body(inbox_h: Harness) -> None:
    h = by_hand(inbox_h)
    await h.inbox.accept(delivery(1))
    assert (await h.inbox.accept(delivery(1, body=b'{"other": true}'))).duplicate is True
    assert await offload(h) == (1, 0)
    assert await h.inbox.payload("acme", "d-1") == b'{"n": 1}'
