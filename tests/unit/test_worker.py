"""The delivery worker keeps up to ``concurrency`` deliveries in flight and never lets a slow one hold back others."""

from __future__ import annotations

import dataclasses
import json

import anyio
import pytest

from kici_core import services
from kici_core.ports import LockfileFetch, RepoSource
from kici_runtime.worker import DeliveryWorker
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
    assert isinstance(w.pipeline, services.Pipeline)


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


async def test_backlog_is_drained_without_wakeups_and_within_concurrency() -> None:
    w = World()
    await w.setup()
    gated = GatedLockfiles()
    gated.release.set()
    use(w, gated)
    for i in range(20):
        await w.deliver(push_payload(), delivery_id=f"d{i}")
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
