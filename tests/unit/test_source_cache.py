"""LookupCache: TTL, negative answers, single flight for concurrent misses, invalidation racing a lookup."""

from __future__ import annotations

import anyio
import pytest

from kici_adapters.postgres.sources import LookupCache

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Loader:
    """Counts calls; answers ``value`` (which tests may change, like a row changed by another process)."""

    def __init__(self, value: object) -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        return self.value


async def test_answers_are_reused_until_the_ttl_expires() -> None:
    clock = Clock()
    cache = LookupCache(ttl=1.0, monotonic=clock)
    load = Loader("a")
    assert await cache.get("k", load) == "a"
    load.value = "b"  # another process changed the row
    clock.t += 0.9
    assert await cache.get("k", load) == "a"
    clock.t += 0.2
    assert await cache.get("k", load) == "b"
    assert load.calls == 2


async def test_none_is_cached_and_invalidate_forgets_it() -> None:
    cache = LookupCache(ttl=1.0, monotonic=Clock())
    load = Loader(None)
    assert await cache.get("k", load) is None
    assert await cache.get("k", load) is None
    assert load.calls == 1
    load.value = "added"
    cache.invalidate()  # a write through the same store
    assert await cache.get("k", load) == "added"


async def test_zero_ttl_always_loads() -> None:
    cache = LookupCache(ttl=0, monotonic=Clock())
    load = Loader("a")
    for _ in range(3):
        await cache.get("k", load)
    assert load.calls == 3


async def test_concurrent_misses_share_one_load() -> None:
    cache = LookupCache(ttl=1.0, monotonic=Clock())
    release = anyio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "v"

    answers: list[str] = []

    async def ask() -> None:
        answers.append(await cache.get("k", slow))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert answers == ["v"] * 8
    assert calls == 1


async def test_a_failed_load_is_not_cached_and_waiters_retry() -> None:
    cache = LookupCache(ttl=1.0, monotonic=Clock())
    attempts = 0
    started = anyio.Event()
    release = anyio.Event()

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            started.set()
            await release.wait()
            raise RuntimeError("database down")
        return "v"

    results: list[object] = []

    async def ask() -> None:
        try:
            results.append(await cache.get("k", flaky))
        except RuntimeError as exc:
            results.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await started.wait()
            tg.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert isinstance(results[0], RuntimeError) and results[1] == "v"
    assert attempts == 2


async def test_a_lookup_that_raced_a_write_does_not_store_its_stale_answer() -> None:
    cache = LookupCache(ttl=10.0, monotonic=Clock())
    reading = anyio.Event()
    release = anyio.Event()

    async def old_row() -> str:
        reading.set()
        await release.wait()
        return "old"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cache.get, "k", old_row)
            await reading.wait()
            cache.invalidate()  # the write committed while the read was in flight
            release.set()
    assert await cache.get("k", Loader("new")) == "new"


async def test_entries_are_bounded() -> None:
    clock = Clock()
    cache = LookupCache(ttl=1.0, max_entries=4, monotonic=clock)
    load = Loader(None)
    for i in range(50):
        await cache.get(f"unknown-{i}", load)
    assert len(cache._entries) <= 4
