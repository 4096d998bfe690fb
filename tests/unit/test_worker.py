"""The delivery worker keeps up to ``concurrency`` deliveries in flight and never lets a slow one hold back others."""

from __future__ import annotations

import dataclasses
import json

import anyio
import pytest

from kici_core import errors
from kici_core.pipeline import Pipeline
from kici_core.source_records import LockfileFetch, RepoSource
from kici_runtime.orchestrator.worker import DeliveryWorker
from tests.unit.test_services import LOCK, SHA, World, push_payload

pytestmark = pytest.mark.anyio

SLOW_SHA = "c" * 40


class GatedLockfiles:
    """Lock files for two commits; reading ``SLOW_SHA`` waits for ``release``. Tracks fetches in flight."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.slow_started = anyio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    async def fetch_lockfile(self, source: RepoSource, repo: str, ref: str) -> LockfileFetch:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if ref == SLOW_SHA:
                self.slow_started.set()
                await self.release.wait()
            else:
                await anyio.lowlevel.checkpoint()
            return LockfileFetch(content=json.dumps(LOCK).encode())
        finally:
            self.in_flight -= 1


def use(w: World, lockfiles: GatedLockfiles) -> None:
    provider = w.pipeline.providers["github"]
    w.pipeline.providers = {"github": dataclasses.replace(provider, lockfiles=lockfiles)}
    assert isinstance(w.pipeline, Pipeline)


def slow_payload() -> dict[str, object]:
    payload = push_payload()
    payload["after"] = SLOW_SHA
    return payload  # type: ignore[return-value]


async def test_slow_delivery_does_not_hold_back_later_ones() -> None:
    w = World()
    await w.setup()
    gated = GatedLockfiles()
    use(w, gated)
    worker = DeliveryWorker(inbox=w.inbox, pipeline=w.pipeline, concurrency=2, poll_seconds=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await w.deliver(slow_payload(), delivery_id="slow")  # type: ignore[arg-type]
            tg.start_soon(worker.run)
            await gated.slow_started.wait()
            for i in range(5):  # each accepted while the slow one is still in flight
                await w.deliver(push_payload(), delivery_id=f"fast{i}")
                worker.wake()
            while worker.processed < 5:
                await anyio.lowlevel.checkpoint()
            entry = await w.inbox.get("acme", "slow")
            assert entry is not None and entry.status != "processed"
            gated.release.set()
            while worker.processed < 6:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert gated.most_in_flight <= 2
    for d in ["slow", *(f"fast{i}" for i in range(5))]:
        entry = await w.inbox.get("acme", d)
        assert entry is not None and entry.status == "processed"


async def backlog(count: int) -> tuple[World, GatedLockfiles]:
    """A world with ``count`` push deliveries accepted and lock files that answer at once."""
    w = World()
    await w.setup()
    gated = GatedLockfiles()
    gated.release.set()
    use(w, gated)
    for i in range(count):
        await w.deliver(push_payload(), delivery_id=f"d{i}")
    return w, gated


async def test_backlog_is_drained_without_wakeups_and_within_concurrency() -> None:
    w, gated = await backlog(20)
    worker = DeliveryWorker(inbox=w.inbox, pipeline=w.pipeline, concurrency=3, poll_seconds=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            while worker.processed < 20:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert gated.most_in_flight <= 3
    assert len(w.inbox.runs) == 20
    assert SHA


class GatedBlobs:
    """A blob store whose writes wait for ``release``."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.fail = False

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise errors.StorageUnavailable("disk full")
        self.objects[key] = data

    async def get(self, key: str) -> bytes:
        return self.objects[key]

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


async def test_payload_copy_is_written_after_the_slot_is_freed() -> None:
    w = World()
    await w.setup()
    blobs = GatedBlobs()
    worker = DeliveryWorker(inbox=w.inbox, pipeline=w.pipeline, concurrency=1, poll_seconds=60, blobs=blobs)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await w.deliver(push_payload(), delivery_id="a")
            tg.start_soon(worker.run)
            await blobs.started.wait()
            # the only slot is free again while the copy of "a" is still being written
            await w.deliver(push_payload(), delivery_id="b")
            worker.wake()
            while worker.processed < 2:
                await anyio.lowlevel.checkpoint()
            assert blobs.objects == {}
            blobs.release.set()
            while len(blobs.objects) < 2:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    for key, data in blobs.objects.items():
        assert key.startswith("executions/") and key.endswith("/webhook-payload.json")
        assert json.loads(data) == push_payload()


async def test_run_once_returns_after_the_copies_and_a_failed_copy_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    await w.setup()
    blobs = GatedBlobs()
    blobs.release.set()
    worker = DeliveryWorker(inbox=w.inbox, pipeline=w.pipeline, blobs=blobs)
    await w.deliver(push_payload(), delivery_id="a")
    with anyio.fail_after(10):
        assert await worker.run_once() == 1
    assert len(blobs.objects) == 1
    blobs.fail = True
    await w.deliver(push_payload(), delivery_id="b")
    with anyio.fail_after(10), caplog.at_level("WARNING", logger="kici.worker"):
        assert await worker.run_once() == 1
    assert len(blobs.objects) == 1
    assert any("payload copy" in r.getMessage() for r in caplog.records)
    entry = await w.inbox.get("acme", "b")
    assert entry is not None and entry.status == "processed"


async def test_a_backlog_is_claimed_in_batches_of_at_least_half_the_slots() -> None:
    w, gated = await backlog(24)
    limits: list[int] = []
    real_claim = w.inbox.claim

    async def claim(*, worker_id: str, limit: int, lease_seconds: float) -> list:  # type: ignore[type-arg]
        limits.append(limit)
        return await real_claim(worker_id=worker_id, limit=limit, lease_seconds=lease_seconds)

    w.inbox.claim = claim  # type: ignore[method-assign]
    worker = DeliveryWorker(inbox=w.inbox, pipeline=w.pipeline, concurrency=4, poll_seconds=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            while worker.processed < 24:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert limits[0] == 4
    assert all(limit >= 2 for limit in limits)  # never one claim per finished delivery
    assert len(limits) <= 24 // 2 + 1
    assert gated.most_in_flight <= 4
