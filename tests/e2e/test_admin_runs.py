"""The ``runs`` admin API and ``kici-admin runs`` against the real app (uvicorn on loopback, embedded
PostgreSQL): listing with filters, paging and counts; a run, its jobs and steps; logs and ``--follow``; the
"why waiting" explanation; ``--json`` outputs; authentication and permission errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.test_agents_e2e import Harness, harness
from tests.support import pg as _pg
from tests.support import waits
from tests.support.agents import RawAgent, job, lock_repo, push
from tests.support.orchestrator import BIN, clean_env, kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

TOKEN = "kat-admin-runs-" + "5" * 24
ENV = {"KICI_SECRET_KEY": "ab" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": TOKEN}
API = "/api/v1/admin/runs"


def _http(h: Harness, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=h.base, headers=headers, timeout=20)


async def _runs_by_workflow(h: Harness, expected: int) -> dict[str, list[str]]:
    """Wait until ``expected`` runs exist; run ids by workflow, oldest first."""
    rows: list[dict[str, Any]] = []

    async def created() -> bool:
        rows[:] = await h.query("SELECT run_id::text AS id, workflow_name FROM execution_runs ORDER BY created_at")
        return len(rows) >= expected

    await h.wait_for(created, what=f"{expected} runs", limit=30)
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["workflow_name"], []).append(r["id"])
    return out


async def _admin_json(h: Harness, *args: str) -> Any:
    return json.loads((await kici_admin(h.base, TOKEN, *args, "--json")).stdout)


# ------------------------------------------------------------------------------------------------ list
async def test_list_filters_paging_and_count(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"])], "lint": [job("check", ["x"])]})
    async with harness(db_url, tmp_path, **ENV) as (h, _), _http(h) as http:
        await h.add_local_source(repo)
        for _ in range(3):
            await push(h.base, repo, sha)
        runs = await _runs_by_workflow(h, 6)
        cancelled = runs["lint"][0]
        assert (await http.post(f"{API}/{cancelled}/cancel")).json()["status"] == "cancelled"

        async def listed(**params: Any) -> dict[str, Any]:
            r = await http.get(API, params=params)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        everything = await listed()
        assert everything["total"] == 6 and everything["limit"] == 20 and everything["offset"] == 0
        created = [r["createdAt"] for r in everything["runs"]]
        assert created == sorted(created, reverse=True)  # newest first
        first = everything["runs"][0]
        assert {"runId", "workflowName", "status", "repoIdentifier", "ref", "sha", "jobCount", "createdAt"} <= set(
            first
        )
        assert first["repoIdentifier"] == "acme/repo" and first["jobCount"] == 1 and "job_config" not in first
        assert [r["runId"] for r in (await listed(status="cancelled"))["runs"]] == [cancelled]
        assert (await listed(status="pending"))["total"] == 5
        assert (await listed(status="pending,cancelled"))["total"] == 6
        lint = await listed(workflowName="lint")
        assert lint["total"] == 3 and {r["workflowName"] for r in lint["runs"]} == {"lint"}
        assert (await listed(repo="acme/repo"))["total"] == 6
        assert (await listed(repo="acme/other"))["total"] == 0
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await listed(since=future))["total"] == 0
        assert await listed(count="true") == {"total": 6}
        pages = [await listed(limit=4, offset=0), await listed(limit=4, offset=4)]
        assert [len(p["runs"]) for p in pages] == [4, 2]
        ids = [r["runId"] for p in pages for r in p["runs"]]
        assert sorted(ids) == sorted(i for group in runs.values() for i in group)
        assert (await listed(limit=0))["limit"] == 1  # clamped to 1..100
        bad = await http.get(API, params={"limit": "many"})
        assert bad.status_code == 400 and "limit" in bad.text
        assert (await http.get(API, params={"since": "yesterday"})).status_code == 400

        # kici-admin runs list
        out = await kici_admin(h.base, TOKEN, "runs", "list", "--count", "--status", "pending")
        assert out.stdout.strip() == "5"
        body = await _admin_json(h, "runs", "list", "--workflow-name", "lint")
        assert body["total"] == 3 and len(body["runs"]) == 3
        text = (await kici_admin(h.base, TOKEN, "runs", "list", "--limit", "2")).stdout
        assert "2 of 6 run(s)" in text and "WORKFLOW" in text


# ------------------------------------------------------------------------------------------------ show / logs
async def test_show_jobs_steps_logs_and_follow(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(
        tmp_path,
        {"ci": [job("build", ["x"], steps=[{"name": "compile", "run": "make"}])], "gpu": [job("train", ["gpu"])]},
    )
    async with harness(db_url, tmp_path, **ENV) as (h, _), _http(h) as http:
        await h.add_local_source(repo)
        agent = await RawAgent.join(h.port, "a", ["x"])
        await push(h.base, repo, sha)
        d = await agent.expect("job.dispatch")
        ci = d["runId"]
        gpu = (await _runs_by_workflow(h, 2))["gpu"][0]
        await agent.ack(d)
        await agent.status(d, "running")
        await agent.step(d, 0, "compile", "running")
        await agent.log(d, -1, "cloning")
        await agent.log(d, 0, "compiling", "linking")
        await agent.step(d, 0, "compile", "success", {"exitCode": 0, "durationMs": 12})

        async def recorded() -> bool:
            steps = await h.query("SELECT status FROM execution_steps WHERE run_id = %(r)s", r=ci)
            return [s["status"] for s in steps] == ["success"]

        await h.wait_for(recorded, what="step recorded")

        # API: the run, its jobs with and without steps, the waiting reason.
        run = (await http.get(f"{API}/{ci}")).json()
        assert run["runId"] == ci and run["workflowName"] == "ci" and run["status"] == "running"
        assert run["jobCount"] == 1 and run["sha"] == sha
        jobs = (await http.get(f"{API}/{ci}/jobs", params={"includeSteps": "true"})).json()["jobs"]
        assert len(jobs) == 1 and jobs[0]["jobName"] == "build" and jobs[0]["status"] == "running"
        assert jobs[0]["agentId"] == "a" and jobs[0]["queueStatus"] == "dispatched"
        [step] = jobs[0]["steps"]
        assert step["stepIndex"] == 0 and step["stepName"] == "compile" and step["status"] == "success"
        assert step["exitCode"] is None or step["exitCode"] == 0
        assert "steps" not in (await http.get(f"{API}/{ci}/jobs")).json()["jobs"][0]
        waiting = (await http.get(f"{API}/{gpu}/jobs")).json()["jobs"]
        assert waiting[0]["status"] == "pending" and waiting[0]["waitingReason"] == "no connected agent has 'gpu'"
        assert (await http.get(f"{API}/00000000-0000-0000-0000-000000000000")).status_code == 404
        assert (await http.get(f"{API}/not-a-uuid/jobs")).status_code == 404

        # API: logs, job filter, paging with ``after``.
        logs = (await http.get(f"{API}/{ci}/logs")).json()
        assert [(c["stepIndex"], c["lines"]) for c in logs["chunks"]] == [
            (-1, ["cloning"]),
            (0, ["compiling", "linking"]),
        ]
        assert {c["jobName"] for c in logs["chunks"]} == {"build"}
        assert (await http.get(f"{API}/{ci}/logs", params={"after": logs["next"]})).json()["chunks"] == []
        assert (await http.get(f"{API}/{ci}/logs", params={"job": "other"})).json()["chunks"] == []

        # kici-admin runs show: text with the waiting reason, and --json with steps.
        text = (await kici_admin(h.base, TOKEN, "runs", "show", gpu)).stdout
        assert f"Run {gpu}  gpu  pending" in text
        assert "train" in text and "no connected agent has 'gpu'" in text
        shown = await _admin_json(h, "runs", "show", ci)
        assert shown["run"]["runId"] == ci and shown["jobs"][0]["steps"][0]["stepName"] == "compile"
        text = (await kici_admin(h.base, TOKEN, "runs", "show", ci)).stdout
        assert "build / 0 compile: success" in text

        # kici-admin runs logs, then --follow until the run ends.
        out = (await kici_admin(h.base, TOKEN, "runs", "logs", ci)).stdout
        assert out.splitlines() == ["[build] cloning", "[build] compiling", "[build] linking"]
        out = (await kici_admin(h.base, TOKEN, "runs", "logs", ci, "--job", "build")).stdout
        assert out.splitlines() == ["cloning", "compiling", "linking"]
        chunks = [
            json.loads(line)
            for line in (await kici_admin(h.base, TOKEN, "runs", "logs", ci, "--json")).stdout.splitlines()
        ]
        assert [c["lines"] for c in chunks] == [["cloning"], ["compiling", "linking"]]
        await _follow(h, agent, d)
        assert (await http.get(f"{API}/{ci}")).json()["status"] == "success"
        await agent.close()


async def _follow(h: Harness, agent: RawAgent, dispatch: dict[str, Any]) -> None:
    """``runs logs --follow`` prints what exists, then new lines, and exits 0 once the run has ended."""
    env = clean_env(KICI_ADMIN_TOKEN=TOKEN)
    cmd = [str(BIN / "kici-admin"), "--url", h.base, "runs", "logs", dispatch["runId"], "--follow", "--interval", "0.1"]
    async with await anyio.open_process(cmd, env=env) as proc:
        assert proc.stdout is not None
        seen = b""
        with waits.within(
            20,
            "`runs logs --follow` to print the log and exit 0 after the run ended",
            lambda: {"printed": seen.decode(errors="replace")[-400:], "exit code": proc.returncode},
        ):
            while b"[build] linking" not in seen:
                seen += await proc.stdout.receive()
            await agent.log(dispatch, 0, "tests passed")
            await agent.status(dispatch, "success")
            async for data in proc.stdout:  # ends when the command exits
                seen += data
            assert await proc.wait() == 0
    assert seen.decode().splitlines()[-1] == "[build] tests passed"


# ------------------------------------------------------------------------------------------------ auth
async def test_authentication_and_permission_errors(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"])]})
    async with harness(db_url, tmp_path, **ENV) as (h, _), _http(h) as http:
        await h.add_local_source(repo)
        await push(h.base, repo, sha)
        run_id = (await _runs_by_workflow(h, 1))["ci"][0]
        async with _http(h, None) as anonymous:
            r = await anonymous.get(API)
            assert r.status_code == 401 and r.json() == {"error": "Missing authorization"}
        async with _http(h, "kat-wrong") as wrong:
            r = await wrong.get(f"{API}/{run_id}")
            assert r.status_code == 401 and r.json() == {"error": "Invalid or expired token"}
        made = await http.post("/api/v1/admin/tokens", json={"label": "viewer", "role": "auditor"})
        assert made.status_code in (200, 201), made.text
        async with _http(h, made.json()["token"]) as auditor:
            assert (await auditor.get(API)).json()["total"] == 1
            r = await auditor.post(f"{API}/{run_id}/cancel")
            assert r.status_code == 403
            assert r.json()["error"] == 'Role "auditor" does not have permission "run.cancel"'
        scoped = await http.post(
            "/api/v1/admin/tokens", json={"label": "elsewhere", "role": "admin", "routingKey": "generic:other:x"}
        )
        assert scoped.status_code in (200, 201), scoped.text
        async with _http(h, scoped.json()["token"]) as other:
            assert (await other.get(API)).json()["total"] == 0  # only runs of its routing key
            assert (await other.get(f"{API}/{run_id}")).status_code == 403
            assert (await other.post(f"{API}/{run_id}/cancel")).status_code == 403
        for path, body, field in (
            (f"{API}/{run_id}/cancel", {"force": "yes"}, "force"),
            (f"{API}/{run_id}/rerun", {"failedOnly": 1}, "failedOnly"),
            ("/api/v1/admin/gc", {"dryRun": "true"}, "dryRun"),
        ):
            r = await http.post(path, json=body)
            assert (r.status_code, r.json()) == (
                400,
                {"error": "Validation error", "details": [{"path": [field], "message": "must be a boolean"}]},
            ), path
        r = await http.post("/api/v1/admin/gc", json={"dryRun": True, "olderThan": "1d"})
        assert r.json()["details"] == [{"path": ["olderThan"], "message": "unknown field"}]
        assert (await _run_status(h, run_id)) == "pending"  # nothing above changed it

        bad = await kici_admin(h.base, "kat-wrong", "runs", "list", check=False)
        assert bad.code == 1 and "HTTP 401: Invalid or expired token" in bad.stderr
        missing = await kici_admin(h.base, TOKEN, "runs", "show", "00000000-0000-0000-0000-000000000000", check=False)
        assert missing.code == 1 and "HTTP 404" in missing.stderr
        result = await anyio.run_process(
            [str(BIN / "kici-admin"), "--url", h.base, "runs", "list"], env=clean_env(), check=False
        )
        assert result.returncode != 0 and b"--token or KICI_ADMIN_TOKEN is required" in result.stderr


async def _run_status(h: Harness, run_id: str) -> str:
    return str((await h.query("SELECT status FROM execution_runs WHERE run_id = %(r)s", r=run_id))[0]["status"])
