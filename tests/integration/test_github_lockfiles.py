"""Lock-file fetch through the contents API: outcomes, retries, size cap, cache and its metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from kici_adapters import metrics
from kici_adapters.github.app import GitHubApp
from kici_adapters.github.client import GitHubApiError, GitHubClient, RetryPolicy
from kici_adapters.github.lockfiles import (
    LOCKFILE_PATH,
    GitHubLockfileSource,
    LockfileCache,
    LockfileMissing,
    LockfileTooLarge,
)
from kici_core.errors import InvalidInput, LockfileError, UpstreamUnavailable
from tests.support.github_server import GitHubServer, ManualClock, RecordingSleep, app_key

APP_ID = 4242
REPO = "acme/app"
SHA = "a" * 40
LOCK = b'{"schemaVersion": 29, "workflows": []}'
CONTENTS = f"/repos/{REPO}/contents/{LOCKFILE_PATH}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[GitHubServer]:
    with GitHubServer(clock=clock) as gh:
        gh.add_app(APP_ID, app_key().public_pem)
        gh.add_installation(77, app_id=APP_ID, repos=[REPO])
        gh.put_file(REPO, SHA, LOCKFILE_PATH, LOCK)
        gh.set_branch(REPO, "main", SHA, default=True)
        yield gh
        assert gh.errors == []


def _source(
    server: GitHubServer,
    clock: ManualClock,
    sleep: RecordingSleep | None = None,
    *,
    timeout: float = 10.0,
    **kwargs: Any,
) -> GitHubLockfileSource:
    client = GitHubClient(api_url=server.url, clock=clock, sleep=sleep or RecordingSleep(), timeout=timeout)
    app = GitHubApp(app_id=APP_ID, private_key=app_key().private_pem, client=client)
    return GitHubLockfileSource(app=app, **kwargs)


def _sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.anyio
async def test_sha_ref_is_fetched_once_and_counted(server: GitHubServer, clock: ManualClock) -> None:
    hits, misses = _sample("kici_lockfile_cache_hits_total"), _sample("kici_lockfile_cache_misses_total")
    fetches = _sample("kici_lockfile_fetch_duration_seconds_count")
    src = _source(server, clock)
    async with src.app.client:
        assert await src.fetch(REPO, SHA) == LOCK
        assert await src.fetch_with_origin(REPO, SHA) == (LOCK, True)
        clock.advance(3599)
        assert await src.fetch(REPO, SHA) == LOCK
    reqs = server.requests_for(CONTENTS)
    assert len(reqs) == 1
    req = reqs[0]
    assert req.query == {"ref": SHA}
    assert req.headers["accept"] == "application/vnd.github.raw+json"
    assert req.headers["x-github-api-version"] == "2022-11-28"
    assert req.headers["user-agent"]
    assert req.headers["authorization"].startswith("token ghs_")
    assert _sample("kici_lockfile_cache_hits_total") - hits == 2
    assert _sample("kici_lockfile_cache_misses_total") - misses == 1
    assert _sample("kici_lockfile_fetch_duration_seconds_count") - fetches == 1


@pytest.mark.anyio
async def test_sha_ref_expires_after_ttl(server: GitHubServer, clock: ManualClock) -> None:
    src = _source(server, clock)
    async with src.app.client:
        await src.fetch(REPO, SHA)
        clock.advance(3601)
        await src.fetch(REPO, SHA)
    assert len(server.requests_for(CONTENTS)) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("ref", ["main", "HEAD", "A" * 40, "abc1234"])
async def test_non_sha_refs_are_cached_at_most_60s(server: GitHubServer, clock: ManualClock, ref: str) -> None:
    server.put_file(REPO, ref, LOCKFILE_PATH, LOCK)
    src = _source(server, clock)
    async with src.app.client:
        await src.fetch(REPO, ref)
        clock.advance(59)
        await src.fetch(REPO, ref)
        assert len(server.requests_for(CONTENTS)) == 1
        clock.advance(2)
        await src.fetch(REPO, ref)
    assert len(server.requests_for(CONTENTS)) == 2


@pytest.mark.anyio
async def test_missing_is_distinct_and_not_cached(server: GitHubServer, clock: ManualClock) -> None:
    src = _source(server, clock)
    other = "b" * 40
    async with src.app.client:
        for _ in range(2):
            with pytest.raises(LockfileMissing) as info:
                await src.fetch(REPO, other)
    assert not isinstance(info.value, UpstreamUnavailable)
    assert (info.value.repo, info.value.ref) == (REPO, other)
    assert len(server.requests_for(CONTENTS)) == 2


@pytest.mark.anyio
async def test_directory_at_the_path_is_missing(server: GitHubServer, clock: ManualClock) -> None:
    server.put_file(REPO, "dir", LOCKFILE_PATH + "/inner.json", b"{}")
    src = _source(server, clock)
    async with src.app.client:
        with pytest.raises(LockfileMissing):
            await src.fetch(REPO, "dir")


@pytest.mark.anyio
async def test_size_cap(server: GitHubServer, clock: ManualClock) -> None:
    server.put_file(REPO, "big", LOCKFILE_PATH, b"x" * 101)
    server.put_file(REPO, "fits", LOCKFILE_PATH, b"y" * 100)
    src = _source(server, clock, max_bytes=100)
    async with src.app.client:
        assert await src.fetch(REPO, "fits") == b"y" * 100
        with pytest.raises(LockfileTooLarge) as info:
            await src.fetch(REPO, "big")
    assert isinstance(info.value, LockfileError) and isinstance(info.value, InvalidInput)
    assert "exceeded size cap" in str(info.value)
    assert len(src.cache) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403, 500, 502])
async def test_persistent_errors_are_retried_then_unavailable(
    server: GitHubServer, clock: ManualClock, status: int
) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep)
    server.fail(CONTENTS, status, times=10, message="nope")
    async with src.app.client:
        with pytest.raises(GitHubApiError) as info:
            await src.fetch(REPO, SHA)
    err = info.value
    assert isinstance(err, UpstreamUnavailable) and not isinstance(err, LockfileMissing)
    assert err.status == status
    assert f"HTTP {status} (nope)" in str(err) and "after 4 attempts" in str(err)
    assert "ghs_" not in str(err)
    assert len(server.requests_for(CONTENTS)) == 4
    assert sleep.delays == [1.0, 2.0, 4.0]
    assert len(src.cache) == 0


@pytest.mark.anyio
async def test_transient_5xx_then_success(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep)
    server.fail(CONTENTS, 503, times=2)
    async with src.app.client:
        assert await src.fetch(REPO, SHA) == LOCK
    assert sleep.delays == [1.0, 2.0]


@pytest.mark.anyio
async def test_unexpected_client_error_is_not_retried(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep)
    server.fail(CONTENTS, 422, message="No commit found for the ref")
    async with src.app.client:
        with pytest.raises(GitHubApiError) as info:
            await src.fetch(REPO, SHA)
    assert info.value.status == 422 and "No commit found" in str(info.value)
    assert sleep.delays == []


@pytest.mark.anyio
async def test_429_honours_retry_after(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep)
    server.fail(CONTENTS, 429, headers={"Retry-After": "7"})
    async with src.app.client:
        assert await src.fetch(REPO, SHA) == LOCK
    assert sleep.delays == [7.0]


@pytest.mark.anyio
async def test_rate_limit_reset_is_honoured(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep)
    reset = str(int(clock.now) + 20)
    server.fail(CONTENTS, 403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    async with src.app.client:
        assert await src.fetch(REPO, SHA) == LOCK
    assert sleep.delays == [20.0]


@pytest.mark.anyio
async def test_retry_after_beyond_bound_fails_at_once(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep)
    server.fail(CONTENTS, 429, headers={"Retry-After": "3600"})
    async with src.app.client:
        with pytest.raises(GitHubApiError) as info:
            await src.fetch(REPO, SHA)
    assert info.value.status == 429 and "3600" in str(info.value)
    assert sleep.delays == [] and len(server.requests_for(CONTENTS)) == 1


@pytest.mark.anyio
async def test_timeout_is_retried(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    src = _source(server, clock, sleep, timeout=0.3)
    server.delay(CONTENTS, 30)
    async with src.app.client:
        with anyio.fail_after(20):
            assert await src.fetch(REPO, SHA) == LOCK
    assert sleep.delays == [1.0]


@pytest.mark.anyio
async def test_persistent_timeouts_and_dropped_connections_are_unavailable(
    server: GitHubServer, clock: ManualClock
) -> None:
    sleep = RecordingSleep()
    client = GitHubClient(api_url=server.url, clock=clock, sleep=sleep, timeout=0.3, retry=RetryPolicy(attempts=3))
    src = GitHubLockfileSource(app=GitHubApp(app_id=APP_ID, private_key=app_key().private_pem, client=client))
    server.delay(CONTENTS, 30, times=2)
    server.drop(CONTENTS)
    async with client:
        with anyio.fail_after(20), pytest.raises(GitHubApiError) as info:
            await src.fetch(REPO, SHA)
    assert info.value.status is None
    assert "after 3 attempts" in str(info.value)
    assert len(server.requests_for(CONTENTS)) == 3


@pytest.mark.anyio
async def test_validate_failure_is_not_cached(server: GitHubServer, clock: ManualClock) -> None:
    def reject(body: bytes) -> None:
        raise LockfileError("schemaVersion", "must be 29")

    src = _source(server, clock, validate=reject)
    async with src.app.client:
        for _ in range(2):
            with pytest.raises(LockfileError):
                await src.fetch(REPO, SHA)
    assert len(server.requests_for(CONTENTS)) == 2


@pytest.mark.anyio
async def test_enterprise_base_url(clock: ManualClock) -> None:
    with GitHubServer(prefix="/api/v3", clock=clock) as ghe:
        ghe.add_app(APP_ID, app_key().public_pem)
        ghe.add_installation(5, app_id=APP_ID, repos=[REPO])
        ghe.put_file(REPO, SHA, LOCKFILE_PATH, LOCK)
        src = _source(ghe, clock)
        async with src.app.client:
            assert await src.fetch(REPO, SHA) == LOCK
        assert ghe.url.endswith("/api/v3")
        assert src.provider.startswith("github@127.0.0.1:")
        assert ghe.errors == []


def test_cache_is_a_bounded_lru(clock: ManualClock) -> None:
    cache = LockfileCache(max_entries=2, clock=clock)
    keys = [LockfileCache.key("github", REPO, c * 40) for c in "abc"]
    cache.put(keys[0], "a" * 40, b"A")
    cache.put(keys[1], "b" * 40, b"B")
    assert cache.get(keys[0]) == b"A"  # a is now most recently used
    cache.put(keys[2], "c" * 40, b"C")
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) == b"A" and cache.get(keys[2]) == b"C"
    assert keys[0] == f"github:{REPO}:{'a' * 40}"
