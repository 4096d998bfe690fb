"""Crash safety of ``kici-standalone`` (decision 2): SIGKILL the whole orchestrator after it acknowledged
deliveries, restart it on the same database, and every acknowledged delivery ends ``processed`` with exactly one
run per (delivery, workflow): nothing lost, nothing run twice.

A killed process leaves its inbox leases behind. The restarted process has the same instance id (host and
port), so its worker frees those leases at start and processes the deliveries at once, without waiting for the
leases to expire.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest

from tests.e2e.conftest import (
    ORG,
    Independent,
    boot,
    github_headers,
    github_world,
    install,
    new_delivery,
    poll,
    push_body,
    shutdown,
)

pytestmark = pytest.mark.anyio

REPO = "acme/crash"


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[Independent]:
    gh = github_world()
    install(gh, REPO)
    try:
        w = boot(db_url, gh, tmp_path / "data")
        try:
            yield w
        finally:
            shutdown(w)
    finally:
        gh.close()


async def _restart(w: Independent) -> None:
    await anyio.to_thread.run_sync(w.proc.start)


async def _assert_each_processed_once(w: Independent, deliveries: set[str]) -> None:
    async def all_done() -> bool | None:
        rows = await w.query(
            "SELECT count(*) FROM event_log WHERE delivery_id = ANY(%s) AND status = 'processed' "
            "AND processed_at IS NOT NULL",
            list(deliveries),
        )
        return True if rows[0][0] == len(deliveries) else None

    await poll(all_done, describe=w.proc.tail, what=f"{len(deliveries)} deliveries to be processed")
    rows = await w.query(
        "SELECT e.delivery_id, e.matched_count, i.state, i.attempts, "
        "  (SELECT count(*) FROM execution_runs r WHERE r.delivery_id = e.delivery_id AND r.org_id = e.org_id) "
        "FROM event_log e JOIN delivery_inbox i ON i.event_log_id = e.id WHERE e.delivery_id = ANY(%s)",
        list(deliveries),
    )
    assert {r[0] for r in rows} == deliveries, "an acknowledged delivery is missing from event_log"
    for delivery, matched, state, _attempts, runs in rows:
        assert (matched, state, runs) == (1, "done", 1), (delivery, matched, state, runs)
    dupes = await w.query(
        "SELECT delivery_id, workflow_name, count(*) FROM execution_runs "
        "GROUP BY delivery_id, workflow_name HAVING count(*) > 1"
    )
    assert dupes == []
    jobs = await w.query(
        "SELECT count(*) FROM execution_jobs j JOIN execution_runs r ON r.run_id = j.run_id "
        "WHERE r.delivery_id = ANY(%s)",
        list(deliveries),
    )
    assert jobs[0][0] == 2 * len(deliveries)  # build: compile + test, written once


async def test_sigkill_while_processing_then_restart_processes_each_delivery_once(world: Independent) -> None:
    w = world
    contents = f"/repos/{REPO}/contents/*"
    w.gh.delay(contents, 30, times=10_000)  # lock-file fetches hang: processing is in flight when we kill

    deliveries: set[str] = set()

    async def post_one() -> None:
        delivery, resp = await w.push(REPO)
        assert resp.status_code == 202, resp.text
        deliveries.add(delivery)

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(post_one)
    assert len(deliveries) == 12

    await poll(
        lambda: _some(w.gh.requests_for(contents)), describe=w.proc.tail, what="a lock-file fetch to reach GitHub"
    )
    w.proc.kill()

    rows = await w.query("SELECT status, processed_at FROM event_log WHERE delivery_id = ANY(%s)", list(deliveries))
    assert len(rows) == 12 and all(r == ("received", None) for r in rows), rows
    leased = await w.query("SELECT count(*) FROM delivery_inbox WHERE locked_until > now()")
    assert leased[0][0] > 0, "the kill should have caught deliveries mid-processing"

    with w.gh._lock:
        w.gh._faults.clear()  # GitHub answers normally again
    await _restart(w)
    await _assert_each_processed_once(w, deliveries)


async def _some(items: Sequence[object]) -> bool | None:
    return True if items else None


async def test_sigkill_during_a_burst_loses_no_acknowledged_delivery(world: Independent) -> None:
    w = world
    acknowledged: set[str] = set()
    unanswered: set[str] = set()
    enough = anyio.Event()
    total, kill_after = 80, 20

    async def post_one(http: httpx.AsyncClient, delivery: str) -> None:
        body = push_body(REPO, note=delivery)
        try:
            resp = await http.post(f"/webhook/{ORG}/github", content=body, headers=github_headers(body, delivery))
        except httpx.TransportError:
            unanswered.add(delivery)
            return
        assert resp.status_code == 202, resp.text
        acknowledged.add(delivery)
        if len(acknowledged) >= kill_after:
            enough.set()

    async def killer() -> None:
        await enough.wait()
        w.proc.kill()

    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=w.url, timeout=30, limits=limits) as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            for _ in range(total):
                tg.start_soon(post_one, http, new_delivery())
    assert len(acknowledged) >= kill_after
    assert acknowledged | unanswered and len(acknowledged) + len(unanswered) == total
    assert unanswered, "the kill should have cut the burst short"

    await _restart(w)
    # Every acknowledged delivery survived; a delivery whose answer was lost may or may not have committed,
    # but whatever committed is processed too (no half-written acceptance).
    stored = {r[0] for r in await w.query("SELECT delivery_id FROM event_log")}
    assert acknowledged <= stored
    await _assert_each_processed_once(w, stored)
