"""The Checks API adapter against the local GitHub server: create, update, lookup by external_id, and how each
GitHub failure is reported to the sender (retry when, give up, forget the id)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from kici_adapters.github.app import GitHubApp
from kici_adapters.github.checks import GitHubChecks
from kici_adapters.github.client import GitHubClient
from kici_core import checks
from kici_core.jsontypes import JSONObject
from tests.support.github_server import GitHubServer, ManualClock, RecordingSleep, app_key

pytestmark = pytest.mark.anyio

APP_ID = 5151
REPO = "acme/app"
SHA = "e" * 40


@pytest.fixture
def server() -> Iterator[GitHubServer]:
    with GitHubServer(clock=ManualClock()) as gh:
        gh.add_app(APP_ID, app_key().public_pem)
        gh.add_installation(9, app_id=APP_ID, repos=[REPO])
        yield gh
        assert gh.errors == []


@pytest.fixture
async def api(server: GitHubServer) -> AsyncIterator[GitHubChecks]:
    async with GitHubClient(api_url=server.url, clock=server.clock, sleep=RecordingSleep()) as client:
        yield GitHubChecks(GitHubApp(app_id=APP_ID, private_key=app_key().private_pem, client=client))


def _body(status: str = "queued", conclusion: str | None = None, sha: str = SHA) -> JSONObject:
    view = checks.CheckView(
        name="kici/ci",
        head_sha=sha,
        external_id="run-1",
        run_id="run-1",
        workflow_name="ci",
        job_name=None,
        status=status,
        conclusion=conclusion,
    )
    return checks.request_body(view, create=True)


async def test_create_then_update_then_lookup_finds_it_instead_of_creating_again(
    server: GitHubServer, api: GitHubChecks
) -> None:
    created = await api.send(REPO, _body(), github_id=None, lookup=False)
    assert created.ok and created.created and created.github_id is not None
    updated = await api.send(REPO, _body("completed", "success"), github_id=created.github_id, lookup=False)
    assert updated.ok and not updated.created and updated.github_id == created.github_id
    again = await api.send(REPO, _body("completed", "success"), github_id=None, lookup=True)
    assert again.ok and again.github_id == created.github_id and not again.created
    runs = server.check_runs(REPO, SHA)
    assert len(runs) == 1 and runs[0]["conclusion"] == "success"
    assert [h["status"] for h in server.check_history(REPO, "kici/ci")] == ["queued", "completed", "completed"]


async def test_failures_say_when_to_retry_or_not_to(server: GitHubServer, api: GitHubChecks) -> None:
    invalid = await api.send(REPO, _body(sha="main"), github_id=None, lookup=False)
    assert not invalid.ok and invalid.permanent and invalid.error == "HTTP 422 (No commit found for SHA: main)"
    server.fail(
        f"/repos/{REPO}/check-runs",
        403,
        headers={"Retry-After": "7"},
        message="You have exceeded a secondary rate limit",
    )
    limited = await api.send(REPO, _body(), github_id=None, lookup=False)
    assert not limited.ok and not limited.permanent and limited.retry_after == 7.0
    server.fail(f"/repos/{REPO}/check-runs", 403, message="Resource not accessible by integration")
    denied = await api.send(REPO, _body(), github_id=None, lookup=False)
    assert denied.retry_after is None and "`checks: write`" in (denied.error or "")
    server.fail(f"/repos/{REPO}/check-runs", 502)
    down = await api.send(REPO, _body(), github_id=None, lookup=False)
    assert not down.ok and not down.permanent and down.retry_after is None and down.error == "HTTP 502 (injected 502)"
    gone = await api.send(REPO, _body(), github_id=424242, lookup=False)
    assert not gone.ok and gone.forget_id
    assert server.check_runs(REPO) == []
