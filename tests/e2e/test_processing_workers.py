"""``KICI_PROCESSING_WORKERS=1``: ``kici-standalone`` processes deliveries in a supervised child process.

Deliveries accepted by the serving process are processed by the child (runs created); a SIGKILLed child is
restarted by the serving process and the restarted child, claiming under the same worker id, frees its
predecessor's leases and finishes the deliveries it was holding, each exactly once; SIGTERM stops both
processes cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import psutil
import pytest

from tests.e2e.conftest import (
    GOOD_LOCKFILE,
    LOCKFILE_PATH,
    SHA,
    Independent,
    boot,
    github_world,
    install,
    poll,
)

pytestmark = pytest.mark.anyio

REPO = "acme/children"
LATER_SHA = "b" * 40


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[Independent]:
    gh = github_world()
    install(gh, REPO)
    gh.put_file(REPO, LATER_SHA, LOCKFILE_PATH, GOOD_LOCKFILE)
    try:
        w = boot(db_url, gh, tmp_path / "data", KICI_PROCESSING_WORKERS="1")
        try:
            yield w
        finally:
            if w.proc.running:
                w.proc.kill()
    finally:
        gh.close()


def _children(w: Independent) -> list[psutil.Process]:
    assert w.proc.proc is not None
    return [
        p for p in psutil.Process(w.proc.proc.pid).children() if "kici_runtime.orchestrator.processing" in p.cmdline()
    ]


async def _one_child(w: Independent, other_than: int | None = None) -> psutil.Process:
    async def probe() -> psutil.Process | None:
        kids = [p for p in _children(w) if p.pid != other_than]
        return kids[0] if len(kids) == 1 else None

    what = "exactly one processing child" + (f" other than pid {other_than}" if other_than else "")
    return await poll(probe, describe=w.proc.tail, what=what)


async def _post(w: Independent, count: int, sha: str = SHA) -> set[str]:
    deliveries: set[str] = set()

    async def post_one() -> None:
        delivery, resp = await w.push(REPO, sha=sha)
        assert resp.status_code == 202, resp.text
        deliveries.add(delivery)

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(post_one)
    return deliveries


async def _processed_once(w: Independent, deliveries: set[str]) -> None:
    async def all_done() -> bool | None:
        rows = await w.query(
            "SELECT count(*) FROM event_log WHERE delivery_id = ANY(%s) AND status = 'processed'", list(deliveries)
        )
        return True if rows[0][0] == len(deliveries) else None

    await poll(all_done, describe=w.proc.tail, what=f"{len(deliveries)} deliveries to be processed")
    rows = await w.query(
        "SELECT delivery_id, count(*) FROM execution_runs WHERE delivery_id = ANY(%s) GROUP BY delivery_id",
        list(deliveries),
    )
    assert {r[0]: r[1] for r in rows} == dict.fromkeys(deliveries, 1)


MATCHED = 'kici_webhooks_processed_total{result="matched"}'


async def _matched_reaches(w: Independent, count: int) -> float | None:
    """The serving process's /metrics count of matched deliveries, once it reached ``count``."""
    seen = (await w.metrics()).get(MATCHED, 0.0)
    return seen if seen >= count else None


async def _more_than(count: int, items: Sequence[object]) -> bool | None:
    return True if len(items) > count else None


async def test_child_processes_deliveries_survives_sigkill_and_stops_on_sigterm(world: Independent) -> None:
    w = world
    child = await _one_child(w)

    first = await _post(w, 5)
    await _processed_once(w, first)
    # the child's counters reach the serving process's /metrics
    assert (
        await poll(lambda: _matched_reaches(w, 5), describe=w.proc.tail, what="/metrics to count 5 matched deliveries")
        == 5
    )

    contents = f"/repos/{REPO}/contents/*"
    w.gh.delay(contents, 30, times=10_000)  # lock-file fetches hang: the child holds leases when it is killed
    fetched = len(w.gh.requests_for(contents))
    # A commit the child has not read the lock file of yet, so its processing must reach GitHub (and hang there).
    second = await _post(w, 6, sha=LATER_SHA)
    await poll(
        lambda: _more_than(fetched, w.gh.requests_for(contents)),
        describe=w.proc.tail,
        what="a lock-file fetch for the new commit to reach GitHub",
    )
    child.kill()
    child.wait(30)
    assert w.proc.running, "killing the child must not take the serving process down"
    leased = await w.query("SELECT locked_by FROM delivery_inbox WHERE locked_until > now()")
    assert leased, "the kill should have caught deliveries mid-processing"
    assert all(r[0].endswith("/processing-0") for r in leased), leased  # the child claimed, not the parent

    with w.gh._lock:
        w.gh._faults.clear()  # GitHub answers normally again
    replacement = await _one_child(w, other_than=child.pid)
    await _processed_once(w, second)
    # the killed child's counts are kept and the replacement's are added: nothing lost, nothing counted twice
    assert (
        await poll(
            lambda: _matched_reaches(w, 11), describe=w.proc.tail, what="/metrics to count 11 matched deliveries"
        )
        == 11
    )

    code = await anyio.to_thread.run_sync(w.proc.stop)
    assert code == 0, w.proc.tail()
    assert not replacement.is_running() or replacement.status() == psutil.STATUS_ZOMBIE
    assert w.proc.log_count("Processing worker stopped") >= 1, w.proc.tail()


async def test_ctrl_c_in_a_terminal_stops_the_child_cleanly_once(world: Independent) -> None:
    """The terminal's SIGINT reaches the whole process group; the child must be stopped by its supervisor alone
    (one SIGTERM), not signalled twice and killed in the middle of its clean-up."""
    w = world
    child = await _one_child(w)
    first = await _post(w, 3)
    await _processed_once(w, first)
    code = await anyio.to_thread.run_sync(w.proc.interrupt)
    assert code == 0, w.proc.tail()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert w.proc.log_count("Processing worker stopped") == 1, w.proc.tail()
    assert w.proc.log_count("did not stop in time") == 0, w.proc.tail()
    assert w.proc.log_count("restarting it") == 0, w.proc.tail()  # the child did not stop on its own
