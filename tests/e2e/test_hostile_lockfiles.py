"""Hostile lock files through a running ``kici-standalone``, with processing in a child process and in the serving
process (``KICI_PROCESSING_WORKERS=1`` and ``0``).

The local GitHub API serves the corpus of ``tests/fixtures/hostile``: a lock file nested 600 deep, a ReDoS-prone
branch regex, a glob that backtracked for minutes against a branch of dashes, and a 2.3 MB file whose 3,000
workflows all match. Each hostile delivery must end ``lockfile_corrupt`` or ``failed`` with its reason (or, for the
glob, be processed), ``/health`` must keep answering meanwhile, the server must stay up, and the ordinary deliveries
posted between them must all be processed, each with its run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.conftest import GOOD_LOCKFILE, Independent, boot, github_world, install, shutdown
from tests.fixtures.hostile import corpus
from tests.support.pg import PgServer, create_database, drop_database

pytestmark = pytest.mark.anyio

HEALTH_TIMEOUT = 10.0
"""How long one ``/health`` request may take before the check counts it as unanswered (a stalled event loop
took 23 s)."""

REPOS: dict[str, bytes] = {
    "acme/ordinary": GOOD_LOCKFILE,
    "acme/nested": corpus.deeply_nested(600),
    "acme/redos": corpus.with_regex("branch", corpus.REDOS_REGEX),
    "acme/dashes": corpus.backtracking_glob(),
    "acme/huge": corpus.many_runs(3000, 3),
}


@pytest.fixture(scope="module", params=["1", "0"], ids=["child-process", "in-process"])
def world(
    request: pytest.FixtureRequest, pg_server: PgServer, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Independent]:
    name = f"h_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server, name, template=pg_template)
    gh = github_world()
    for repo, content in REPOS.items():
        install(gh, repo, content=content)
    try:
        w = boot(url, gh, tmp_path_factory.mktemp("hostile"), KICI_PROCESSING_WORKERS=request.param)
        try:
            yield w
        finally:
            shutdown(w)
    finally:
        gh.close()
        drop_database(pg_server, name)


class HealthWatch:
    """Asks ``/health`` over and over until stopped; records every answer that was not a timely 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers = 0
        self.problems: list[str] = []
        self.stop = anyio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT) as http:
            while not self.stop.is_set():
                try:
                    resp = await http.get(f"{self.url}/health")
                    if resp.status_code != 200:
                        self.problems.append(f"/health answered {resp.status_code}: {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    self.problems.append(f"/health did not answer within {HEALTH_TIMEOUT} s: {exc!r}")
                self.answers += 1
                with anyio.move_on_after(0.2):  # pace of the watch, not a synchronisation
                    await self.stop.wait()


async def _push(w: Independent, repo: str, **kw: Any) -> str:
    delivery, resp = await w.push(repo, **kw)
    assert resp.status_code == 202, resp.text
    return delivery


async def test_hostile_lock_files_end_with_their_reason_and_nothing_around_them_is_lost(world: Independent) -> None:
    w = world
    watch = HealthWatch(w.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        ordinary = [await _push(w, "acme/ordinary")]
        nested = await _push(w, "acme/nested")
        ordinary.append(await _push(w, "acme/ordinary"))
        redos = await _push(w, "acme/redos", branch="a" * 40 + "!")
        ordinary.append(await _push(w, "acme/ordinary"))
        dashes = await _push(w, "acme/dashes", branch="-" * 255)
        ordinary.append(await _push(w, "acme/ordinary"))
        huge = await _push(w, "acme/huge")
        ordinary.append(await _push(w, "acme/ordinary"))

        row = await w.wait_status(nested, "lockfile_corrupt")
        assert "nested more than 64 levels deep" in row["error_message"]
        row = await w.wait_status(redos, "lockfile_corrupt")
        assert "^(a+)+$" in row["error_message"] and "catastrophic backtracking" in row["error_message"]
        await w.wait_status(dashes, "processed")
        assert [name for name, _ in await w.runs(dashes)] == ["always"]
        row = await w.wait_status(huge, "failed")
        assert "3000 workflows matched" in row["error_message"]
        assert "KICI_MAX_RUNS_PER_DELIVERY" in row["error_message"]
        assert await w.runs(huge) == []
        for delivery in ordinary:
            await w.wait_status(delivery, "processed")
            assert [name for name, _ in await w.runs(delivery)] == ["build"]
        watch.stop.set()
    assert watch.answers > 0 and watch.problems == [], watch.problems
    assert w.proc.running, w.proc.tail()

    # the reason is where an operator looks, and the delivery can be replayed
    shown = await w.admin("event-log", "show", huge, "--org", "acme")
    assert "KICI_MAX_RUNS_PER_DELIVERY" in shown.stdout
    assert (await w.admin("event-log", "replay", huge, "--org", "acme")).code == 0


@pytest.fixture
def frozen(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Independent]:
    """A processing child with a short time budget, and a repository whose branch regex freezes it."""
    gh = github_world()
    install(gh, "acme/ordinary", content=GOOD_LOCKFILE)
    install(gh, "acme/frozen", content=corpus.with_regex("branch", corpus.POLYNOMIAL_REGEX))
    try:
        w = boot(
            db_url,
            gh,
            tmp_path_factory.mktemp("frozen"),
            KICI_PROCESSING_WORKERS="1",
            KICI_PROCESSING_TIMEOUT_SECONDS="2",
            KICI_PROCESSING_RESTART_DELAY_MS="100",  # restarts after 0.1, 0.2, 0.4 s instead of 1, 2, 4 s
        )
        try:
            yield w
        finally:
            shutdown(w)
    finally:
        gh.close()


async def test_a_regex_that_freezes_the_processing_child_is_parked_after_three_kills(frozen: Independent) -> None:
    """The guard cannot rule out every slow regex; the watchdog stops a child whose loop froze, and the
    poison-pill rule parks the delivery after the third time, so processing carries on."""
    w = frozen
    before = await _push(w, "acme/ordinary")
    await w.wait_status(before, "processed")
    watch = HealthWatch(w.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        poison = await _push(w, "acme/frozen", branch=corpus.POLYNOMIAL_BRANCH)
        row = await w.wait_status(poison, "failed", bound=180)
        assert "crashed or timed out 3 times" in row["error_message"], row
        after = await _push(w, "acme/ordinary")
        await w.wait_status(after, "processed")
        assert [name for name, _ in await w.runs(after)] == ["build"]
        watch.stop.set()
    assert watch.problems == [], watch.problems  # the serving process answered throughout
    assert w.proc.log_count("Processing worker stalled") == 3, w.proc.tail()
    restarts = [json.loads(line) for line in w.proc.lines if "Processing worker exited; restarting it" in line]
    assert [r["restartInSeconds"] for r in restarts] == [0.1, 0.2, 0.4], w.proc.tail()
