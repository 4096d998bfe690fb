"""GroupCommit's scheduling, with an in-memory commit function: lanes are never lost, batches respect the byte
limit, and every caller learns its own outcome."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import pytest

from kici_adapters.postgres.inbox import AcceptRow, CommitResult, GroupCommit
from kici_core import errors

pytestmark = pytest.mark.anyio


def row(n: int, *, body: bytes | None = b"x", delivery_id: str | None = None) -> AcceptRow:
    return AcceptRow(
        org_id="acme",
        delivery_id=delivery_id or f"d-{n}",
        routing_key="github:1",
        event="push",
        action=None,
        source="direct",
        provider="github",
        repo_identifier=None,
        ref=None,
        payload_key=None,
        payload_omitted_reason=None,
        payload_size_bytes=1,
        payload_hash="0" * 64,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        body=body,
    )


class Store:
    """Claims keys like the database does; ``gate`` holds commits until released."""

    def __init__(self) -> None:
        self.claimed: set[tuple[str, str]] = set()
        self.batches: list[list[str]] = []
        self.gate: anyio.Event | None = None
        self.active = 0
        self.peak = 0
        self.started = 0
        self.progress = anyio.Event()
        self.fail_next = False

    async def commit(self, rows: Sequence[AcceptRow]) -> CommitResult:
        self.active += 1
        self.started += 1
        self.peak = max(self.peak, self.active)
        self.progress.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise errors.StorageUnavailable("database unavailable")
            self.batches.append([r.delivery_id for r in rows])
            new = {r.key for r in rows} - self.claimed
            self.claimed |= new
            return new, {}
        finally:
            self.active -= 1

    async def wait_started(self, n: int) -> None:
        while self.started < n:
            self.progress = anyio.Event()
            await self.progress.wait()


async def test_lanes_survive_commits_that_end_together() -> None:
    store = Store()
    group = GroupCommit(store.commit, lanes=2)
    results: dict[str, bool] = {}

    async def send(n: int) -> None:
        results[f"d-{n}"] = await group.submit(row(n))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            store.gate = anyio.Event()
            tg.start_soon(send, 0)
            tg.start_soon(send, 1)
            await store.wait_started(2)  # both lanes busy
            for n in range(2, 6):
                tg.start_soon(send, n)  # these queue
            await anyio.wait_all_tasks_blocked()
            store.gate.set()  # both commits end in the same turn: each lane hands over to a different caller
        assert results == {f"d-{n}": False for n in range(6)}

        # both lanes are still there: two commits can run at once
        store.gate = gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, 10)
            tg.start_soon(send, 11)
            await anyio.wait_all_tasks_blocked()
            try:
                assert store.active == 2
            finally:
                gate.set()  # commits are shielded: never leave one waiting
        assert results["d-10"] is False and results["d-11"] is False


async def test_batches_respect_the_byte_limit_and_count() -> None:
    store = Store()
    group = GroupCommit(store.commit, lanes=1, max_batch=3, max_batch_bytes=10)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            store.gate = anyio.Event()
            tg.start_soon(group.submit, row(0))
            await store.wait_started(1)
            for n, size in enumerate([4, 4, 4, 20, 1, 1, 1, 1], start=1):
                tg.start_soon(group.submit, row(n, body=b"x" * size))
            await anyio.wait_all_tasks_blocked()
            store.gate.set()
    assert store.batches == [["d-0"], ["d-1", "d-2"], ["d-3"], ["d-4"], ["d-5", "d-6", "d-7"], ["d-8"]]


async def test_duplicates_in_one_batch_and_failed_commits() -> None:
    store = Store()
    group = GroupCommit(store.commit, lanes=1)
    outcomes: list[str] = []

    async def send(n: int, delivery_id: str) -> None:
        try:
            outcomes.append("dup" if await group.submit(row(n, delivery_id=delivery_id)) else "new")
        except errors.StorageUnavailable:
            outcomes.append("failed")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            store.gate = anyio.Event()
            tg.start_soon(send, 0, "first")
            await store.wait_started(1)
            for n in range(3):
                tg.start_soon(send, n, "same")
            await anyio.wait_all_tasks_blocked()
            store.gate.set()
        assert sorted(outcomes) == ["dup", "dup", "new", "new"]
        outcomes.clear()
        store.gate, store.fail_next = None, True
        await send(9, "lost")
        assert outcomes == ["failed"]
        await send(9, "lost")  # nothing was recorded: the retry is new
        assert outcomes == ["failed", "new"]
