"""ingest.shared_get: concurrent secret reads share one store read; errors reach every waiter; a cancelled
leader leaves the others to read for themselves."""

from __future__ import annotations

import anyio
import pytest

from kici_runtime.orchestrator import ingest

pytestmark = pytest.mark.anyio


class SlowStore:
    """A secret store whose reads wait for ``release``; counts reads; fails while ``error`` is set."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.reads = 0
        self.error: Exception | None = None
        self.values = {("__system__", "__source__/s", "webhookSecret"): "s3cret"}

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        self.reads += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.values.get((org_id, scope, key))

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        self.values[(org_id, scope, key)] = value

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        return 0


async def test_concurrent_reads_share_one_store_read() -> None:
    store = SlowStore()
    answers: list[str | None] = []

    async def read() -> None:
        answers.append(await ingest.shared_get(store, "__system__", "__source__/s", "webhookSecret"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            store.release.set()
    assert answers == ["s3cret"] * 10
    assert store.reads == 1
    # once the read is over the next caller reads again (the store's own cache decides what that costs)
    assert await ingest.shared_get(store, "__system__", "__source__/s", "webhookSecret") == "s3cret"
    assert store.reads == 2


async def test_an_error_reaches_every_waiter_and_is_not_kept() -> None:
    store = SlowStore()
    store.error = RuntimeError("storage down")
    failures: list[Exception] = []

    async def read() -> None:
        try:
            await ingest.shared_get(store, "__system__", "__source__/s", "webhookSecret")
        except RuntimeError as exc:
            failures.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            store.release.set()
    assert len(failures) == 3 and store.reads == 1
    store.error = None
    assert await ingest.shared_get(store, "__system__", "__source__/s", "webhookSecret") == "s3cret"


async def test_a_cancelled_leader_leaves_the_others_to_read() -> None:
    store = SlowStore()
    answers: list[str | None] = []

    async def follower() -> None:
        answers.append(await ingest.shared_get(store, "__system__", "__source__/s", "webhookSecret"))

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await ingest.shared_get(store, "__system__", "__source__/s", "webhookSecret")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            leader_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            store.release.set()
    assert answers == ["s3cret"]
    assert store.reads == 2
