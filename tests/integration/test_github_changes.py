"""Changed files of pushes (compare API) and pull requests (paginated PR files API)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kici_adapters.github.app import GitHubApp
from kici_adapters.github.changes import ZERO_SHA, GitHubChangedFilesSource
from kici_adapters.github.client import GitHubApiError, GitHubClient
from tests.support.github_server import GitHubServer, ManualClock, RecordingSleep, app_key

APP_ID = 4242
REPO = "acme/app"
BEFORE, AFTER = "1" * 40, "2" * 40


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[GitHubServer]:
    with GitHubServer(clock=clock) as gh:
        gh.add_app(APP_ID, app_key().public_pem)
        gh.add_installation(77, app_id=APP_ID, repos=[REPO])
        yield gh
        assert gh.errors == []


def _changes(server: GitHubServer, clock: ManualClock, sleep: RecordingSleep | None = None) -> GitHubChangedFilesSource:
    client = GitHubClient(api_url=server.url, clock=clock, sleep=sleep or RecordingSleep())
    return GitHubChangedFilesSource(app=GitHubApp(app_id=APP_ID, private_key=app_key().private_pem, client=client))


@pytest.mark.anyio
async def test_push_uses_compare(server: GitHubServer, clock: ManualClock) -> None:
    server.set_compare(REPO, BEFORE, AFTER, ["src/a.py", "docs/readme.md"])
    src = _changes(server, clock)
    async with src.app.client:
        files = await src.push_files(REPO, before=BEFORE, after=AFTER)
    assert files == ("src/a.py", "docs/readme.md")
    assert [r.path for r in server.requests_for("/repos/*/compare/*")] == [f"/repos/{REPO}/compare/{BEFORE}...{AFTER}"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("before", "after"),
    [(ZERO_SHA, AFTER), (BEFORE, ZERO_SHA), (None, AFTER), (BEFORE, None), ("", AFTER)],
)
async def test_push_without_a_diff_base_has_no_files(
    server: GitHubServer, clock: ManualClock, before: str | None, after: str | None
) -> None:
    src = _changes(server, clock)
    async with src.app.client:
        assert await src.push_files(REPO, before=before, after=after) == ()
    assert server.requests == []


@pytest.mark.anyio
async def test_truncated_compare_warns(
    server: GitHubServer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_compare(REPO, BEFORE, AFTER, [f"f{i}" for i in range(350)])
    src = _changes(server, clock)
    with caplog.at_level(logging.WARNING, logger="kici_adapters.github.changes"):
        async with src.app.client:
            files = await src.push_files(REPO, before=BEFORE, after=AFTER)
    assert len(files) == 300
    assert any("truncated" in rec.getMessage() for rec in caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize(("count", "pages"), [(0, 1), (99, 1), (100, 2), (250, 3)])
async def test_pull_request_files_follow_pages(
    server: GitHubServer, clock: ManualClock, count: int, pages: int
) -> None:
    names = [f"src/file{i}.ts" for i in range(count)]
    server.set_pull_files(REPO, 12, names)
    src = _changes(server, clock)
    async with src.app.client:
        files = await src.pull_request_files(REPO, 12)
    assert files == tuple(names)
    reqs = server.requests_for(f"/repos/{REPO}/pulls/12/files")
    assert [r.query for r in reqs] == [{"per_page": "100", "page": str(p)} for p in range(1, pages + 1)]


@pytest.mark.anyio
async def test_pull_request_files_stop_at_github_cap(server: GitHubServer, clock: ManualClock) -> None:
    server.set_pull_files(REPO, 3, [f"f{i}" for i in range(3500)])
    src = _changes(server, clock)
    async with src.app.client:
        files = await src.pull_request_files(REPO, 3)
    assert len(files) == 3000
    assert len(server.requests_for(f"/repos/{REPO}/pulls/3/files")) == 30


@pytest.mark.anyio
async def test_rate_limited_page_is_retried(server: GitHubServer, clock: ManualClock) -> None:
    server.set_pull_files(REPO, 4, [f"f{i}" for i in range(150)])
    server.fail(f"/repos/{REPO}/pulls/4/files", 429, headers={"Retry-After": "1"})
    sleep = RecordingSleep()
    src = _changes(server, clock, sleep)
    async with src.app.client:
        files = await src.pull_request_files(REPO, 4)
    assert len(files) == 150
    assert sleep.delays == [1.0]


@pytest.mark.anyio
async def test_persistent_failure_raises_not_empty(server: GitHubServer, clock: ManualClock) -> None:
    server.set_compare(REPO, BEFORE, AFTER, ["a"])
    server.fail(f"/repos/{REPO}/compare/*", 500, times=4)
    src = _changes(server, clock)
    async with src.app.client:
        with pytest.raises(GitHubApiError) as info:
            await src.push_files(REPO, before=BEFORE, after=AFTER)
    assert info.value.status == 500


@pytest.mark.anyio
async def test_unknown_compare_is_an_error(server: GitHubServer, clock: ManualClock) -> None:
    src = _changes(server, clock)
    async with src.app.client:
        with pytest.raises(GitHubApiError) as info:
            await src.push_files(REPO, before=BEFORE, after=AFTER)
    assert info.value.status == 404
