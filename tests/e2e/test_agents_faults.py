"""Agent faults against the real app (uvicorn on loopback, embedded PostgreSQL), with hand-driven agents.

Each test uses :class:`tests.support.agents.RawAgent` so the agent misbehaves exactly as wanted: it never acks a
``job.dispatch`` (ack deadline, 4031, requeue, attempt budget), rejects one, goes silent while running (stale
detector), or is told to cancel (admin API and ``kici-admin runs cancel``). Timers are shortened through the
spec's settings; every wait is on a received message or on database state, bounded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.test_agents_e2e import Harness, harness
from tests.support import pg as _pg
from tests.support import waits
from tests.support.agents import RawAgent, job, lock_repo, push
from tests.support.orchestrator import kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

FAST_ACK = {"KICI_DISPATCH_ACK_TIMEOUT_MS": "1000"}
ADMIN_TOKEN = "kat-admin-faults-" + "7" * 24
ADMIN = {"KICI_SECRET_KEY": "ef" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN}
ACK_EXHAUSTED = "Job failed: re-dispatch attempts exhausted after 5 attempts (dispatch ack timeout)"


async def _jobs(h: Harness, run_id: str) -> dict[str, dict[str, Any]]:
    rows = await h.query(
        "SELECT j.*, q.status AS queue_status, q.dispatch_attempts, q.agent_id AS queue_agent"
        " FROM execution_jobs j LEFT JOIN dispatch_queue q ON q.id = j.job_id"
        " WHERE j.run_id = %(r)s",
        r=run_id,
    )
    return {r["job_name"]: r for r in rows}


async def _run(h: Harness, run_id: str) -> dict[str, Any]:
    return (await h.query("SELECT * FROM execution_runs WHERE run_id = %(r)s", r=run_id))[0]


async def _until_run(h: Harness, run_id: str, *statuses: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await _run(h, run_id))
        return found["status"] in statuses

    await h.wait_for(reached, what=f"run {run_id} {statuses}", limit=30)
    return found


async def _until_job(h: Harness, run_id: str, name: str, status: str) -> None:
    async def reached() -> bool:
        return (await _jobs(h, run_id)).get(name, {}).get("status") == status

    await h.wait_for(reached, what=f"job {name} {status}", limit=30)


def _agents(h: Harness) -> tuple[str, ...]:
    assert h.orch is not None and h.orch.agents is not None
    return h.orch.agents.core.agent_ids()


# ------------------------------------------------------------------------------------------------ ack deadline
async def test_unacked_dispatch_is_cancelled_closed_4031_and_goes_to_another_agent(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"])]})
    async with harness(db_url, tmp_path, **FAST_ACK) as (h, _):
        await h.add_local_source(repo)
        lazy = await RawAgent.join(h.port, "lazy", ["x"])  # registered first: idle longest, chosen first
        worker = await RawAgent.join(h.port, "worker", ["x"])
        await push(h.base, repo, sha)
        first = await lazy.expect("job.dispatch")
        cancel = await lazy.expect("job.cancel", job_id=first["jobId"])
        assert cancel["reason"] == "dispatch ack timeout" and cancel["runId"] == first["runId"]
        assert "force" not in cancel
        assert await lazy.closed() == (4031, "dispatch ack timeout")
        assert "lazy" not in _agents(h)
        second = await worker.expect("job.dispatch")
        assert second["jobId"] == first["jobId"]
        await worker.run_to_success(second)
        run = await _until_run(h, first["runId"], "success", "failed", "cancelled")
        assert run["status"] == "success"
        build = (await _jobs(h, first["runId"]))["build"]
        assert build["agent_id"] == "worker" and build["status"] == "success"
        assert build["queue_status"] == "completed" and build["dispatch_attempts"] == 1
        await worker.close()


async def test_five_unacked_deliveries_fail_the_job(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"]), job("after", ["x"], needs=["build"])]})
    async with harness(db_url, tmp_path, **FAST_ACK) as (h, _):
        await h.add_local_source(repo)
        await push(h.base, repo, sha)
        job_ids = set()
        for _ in range(5):  # the same agent reconnects after every 4031 and gets the job again
            agent = await RawAgent.join(h.port, "flaky", ["x"])
            dispatch = await agent.expect("job.dispatch")
            job_ids.add(dispatch["jobId"])
            assert await agent.closed() == (4031, "dispatch ack timeout")
            run_id = dispatch["runId"]
        assert len(job_ids) == 1
        run = await _until_run(h, run_id, "success", "failed", "cancelled")
        jobs = await _jobs(h, run_id)
        assert jobs["build"]["status"] == "failed"
        assert jobs["build"]["error_message"] == ACK_EXHAUSTED
        assert jobs["build"]["attempts"] == 5  # five deliveries, no sixth
        assert jobs["build"]["queue_status"] == "failed"
        assert jobs["after"]["status"] == "skipped"
        assert run["status"] == "failed" and run["failure_reason"] == "Failed jobs: build"
        # A sixth connection gets nothing: the job is over.
        agent = await RawAgent.join(h.port, "flaky", ["x"])
        assert not [m for m in agent.received if m["type"] == "job.dispatch"]
        await agent.close()


# ------------------------------------------------------------------------------------------------ reject
async def test_rejected_job_is_requeued_to_another_agent(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"])]})
    async with harness(db_url, tmp_path) as (h, _):
        await h.add_local_source(repo)
        busy = await RawAgent.join(h.port, "busy", ["x"])
        other = await RawAgent.join(h.port, "other", ["x"])
        await push(h.base, repo, sha)
        first = await busy.expect("job.dispatch")
        await busy.reject(first, "busy")
        second = await other.expect("job.dispatch")
        assert second["jobId"] == first["jobId"]
        await other.run_to_success(second)
        run = await _until_run(h, first["runId"], "success", "failed", "cancelled")
        assert run["status"] == "success"
        build = (await _jobs(h, first["runId"]))["build"]
        assert build["agent_id"] == "other" and build["dispatch_attempts"] == 0  # "not now" spends no delivery
        assert set(_agents(h)) == {"busy", "other"}  # a reject does not disconnect
        await busy.close()
        await other.close()


async def test_busy_agent_is_left_alone_until_it_reports_a_free_slot_and_kici_admin_says_why(
    db_url: str, tmp_path: Path
) -> None:
    # The agent finished a job, was handed the next one at once and answered busy (it was still tidying up), then
    # agent.status as the upstream agent does. The job waits, without spending a delivery, until the agent says it
    # has a free slot; meanwhile `kici-admin runs show` says why.
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"]), job("after", ["x"], needs=["build"])]})
    async with harness(db_url, tmp_path, **ADMIN) as (h, _):
        assert h.orch is not None and h.orch.agents is not None
        # Only the agent's report may lift the hold in this test, not the fallback timer.
        h.orch.agents.core.config = replace(h.orch.agents.core.config, busy_backoff=600.0)
        await h.add_local_source(repo)
        agent = await RawAgent.join(h.port, "solo", ["x"])
        await push(h.base, repo, sha)
        build = await agent.expect("job.dispatch")
        await agent.run_to_success(build)
        after = await agent.expect("job.dispatch")
        await agent.reject(after, "busy")
        await agent.send({"type": "agent.status", "agentId": "solo", "activeJobs": 1})
        run_id = after["runId"]

        async def explained() -> str | None:
            shown = await kici_admin(h.base, ADMIN_TOKEN, "runs", "show", run_id)
            return shown.stdout if "rejected a dispatch as busy" in shown.stdout else None

        shown = await h.wait_for(explained, what="`kici-admin runs show` to explain the waiting job")
        assert (
            "all eligible agents are busy: solo (solo rejected a dispatch as busy; no job goes there until it "
            "reports a free slot)" in " ".join(shown.split())
        ), shown
        jobs = await _jobs(h, run_id)
        assert jobs["after"]["status"] == "pending" and jobs["after"]["queue_status"] == "pending"
        assert jobs["after"]["dispatch_attempts"] == 0
        assert [m["jobId"] for m in agent.received if m["type"] == "job.dispatch"] == [build["jobId"], after["jobId"]]

        await agent.send({"type": "agent.status", "agentId": "solo", "activeJobs": 0})
        again = await agent.expect("job.dispatch")
        assert again["jobId"] == after["jobId"]
        await agent.run_to_success(again)
        run = await _until_run(h, run_id, "success", "failed", "cancelled")
        assert run["status"] == "success"
        assert (await _jobs(h, run_id))["after"]["dispatch_attempts"] == 0
        await agent.close()


# ------------------------------------------------------------------------------------------------ stale jobs
async def test_silent_running_job_is_cancelled_and_timed_out_stale(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("beating", ["x"]), job("silent", ["x"]), job("unstarted", ["x"])]})
    # Stale threshold = 500 ms x 2 = 1 s without a job heartbeat.
    async with harness(
        db_url, tmp_path, KICI_JOB_HEARTBEAT_INTERVAL_MS="500", KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER="2"
    ) as (h, _):
        await h.add_local_source(repo)
        agent = await RawAgent.join(h.port, "a", ["x"], max_concurrency=3)
        await push(h.base, repo, sha)
        by_name = {}
        for _ in range(3):
            d = await agent.expect("job.dispatch")
            by_name[d["jobConfig"]["name"]] = d
        for name in ("beating", "silent"):
            await agent.ack(by_name[name])
            await agent.status(by_name[name], "running")
        await agent.ack(by_name["unstarted"])
        # Heartbeat "beating" every 250 ms while waiting for the two cancels (each wait is bounded).
        cancels: dict[str, dict[str, Any]] = {}
        with waits.within(20, "job.cancel for the silent and the unstarted job", lambda: sorted(cancels)):
            while len(cancels) < 2:
                await agent.heartbeat_job(by_name["beating"])
                with anyio.move_on_after(0.25):
                    msg = await agent.expect("job.cancel")
                    cancels[msg["jobId"]] = msg
        ids = {d["jobId"]: name for name, d in by_name.items()}
        assert {ids[j] for j in cancels} == {"silent", "unstarted"}
        assert {c["reason"] for c in cancels.values()} == {"No heartbeat received"}
        run_id = by_name["silent"]["runId"]
        await _until_job(h, run_id, "unstarted", "timed_out_stale")
        await _until_job(h, run_id, "silent", "timed_out_stale")
        jobs = await _jobs(h, run_id)
        assert jobs["silent"]["error_message"].startswith("No heartbeat received for ")
        assert jobs["unstarted"]["error_message"] == "No heartbeat -- dispatch never acknowledged"
        assert jobs["silent"]["queue_status"] == "failed"
        assert jobs["beating"]["status"] == "running"
        assert h.orch is not None and h.orch.agents is not None
        view = h.orch.agents.core.agent("a")  # still registered, the two slots released
        assert view is not None and view.active_jobs == (by_name["beating"]["jobId"],)
        await agent.status(by_name["beating"], "success")
        run = await _until_run(h, run_id, "success", "failed", "cancelled")
        assert run["status"] == "failed"
        await agent.close()


# ------------------------------------------------------------------------------------------------ cancellation
async def test_cancel_through_the_api_and_kici_admin(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(
        tmp_path, {"ci": [job("held", ["x"]), job("waiting", ["gpu"]), job("later", ["x"], needs=["held"])]}
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with harness(db_url, tmp_path, **ADMIN) as (h, _):
        await h.add_local_source(repo)
        agent = await RawAgent.join(h.port, "a", ["x"])
        async with httpx.AsyncClient(base_url=h.base, headers=auth, timeout=20) as http:
            # 1. API cancel of a run with a running job: job.cancel to the agent, pending jobs cancelled now.
            await push(h.base, repo, sha)
            d = await agent.expect("job.dispatch")
            await agent.ack(d)
            await agent.status(d, "running")
            run_id = d["runId"]
            await _until_job(h, run_id, "held", "running")
            r = await http.post(f"/api/v1/admin/runs/{run_id}/cancel")
            assert r.status_code == 200 and r.json() == {"status": "cancelling", "notified": 1}
            cancel = await agent.expect("job.cancel", job_id=d["jobId"])
            assert cancel["reason"] == "run cancelled via API" and "force" not in cancel
            jobs = await _jobs(h, run_id)
            assert jobs["waiting"]["status"] == "cancelled" and jobs["later"]["status"] == "cancelled"
            assert jobs["waiting"]["error_message"] == "run cancelled via API"
            assert jobs["waiting"]["queue_status"] == "expired"
            assert (await _run(h, run_id))["status"] == "cancelling"
            await agent.status(d, "cancelled")
            run = await _until_run(h, run_id, "success", "failed", "cancelled")
            assert run["status"] == "cancelled" and run["cancelled_by"]
            assert run["failure_reason"] == "run cancelled via API"
            again = await http.post(f"/api/v1/admin/runs/{run_id}/cancel")
            assert again.status_code == 409
            assert again.json() == {"error": "Run already in terminal state", "status": "cancelled"}
            assert (
                await http.post("/api/v1/admin/runs/00000000-0000-0000-0000-000000000000/cancel")
            ).status_code == 404

            # 2. kici-admin runs cancel --force: job.cancel carries force.
            await push(h.base, repo, sha)
            d = await agent.expect("job.dispatch")
            await agent.ack(d)
            await agent.status(d, "running")
            await _until_job(h, d["runId"], "held", "running")
            out = await kici_admin(h.base, ADMIN_TOKEN, "runs", "cancel", d["runId"], "--force", "--json")
            assert '"cancelling"' in out.stdout
            cancel = await agent.expect("job.cancel", job_id=d["jobId"])
            assert cancel["reason"] == "force cancelled via API" and cancel["force"] is True
            await agent.status(d, "cancelled")
            assert (await _until_run(h, d["runId"], "cancelled", "failed", "success"))["status"] == "cancelled"

            # 3. Nothing dispatched (no agent connected): the run is cancelled at once.
            await agent.close()
            await h.wait_for(lambda: _none_connected(h), what="agent gone")
            delivery = await push(h.base, repo, sha)
            rows: list[dict[str, Any]] = []

            async def created() -> bool:
                rows[:] = await h.query(
                    "SELECT run_id::text AS id FROM execution_runs WHERE delivery_id LIKE '%%:' || %(d)s", d=delivery
                )
                return bool(rows)

            await h.wait_for(created, what="third run created", limit=30)
            run_id = rows[0]["id"]
            out = await kici_admin(h.base, ADMIN_TOKEN, "runs", "cancel", run_id)
            assert out.stdout.strip() == f"Run {run_id}: cancelled"
            assert (await _run(h, run_id))["status"] == "cancelled"
            assert {j["status"] for j in (await _jobs(h, run_id)).values()} == {"cancelled"}


async def _none_connected(h: Harness) -> bool:
    return not _agents(h)
