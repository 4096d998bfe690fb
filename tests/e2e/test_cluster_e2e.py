"""Three ``kici-standalone`` processes on one PostgreSQL, as the operator guide's scale-out section deploys them.

Real ``kici-agent`` processes connect through a round-robin TCP balancer (the stand-in for Caddy), so they spread
over the three orchestrators and, when one dies, reconnect to another. Webhooks go to all three processes
directly. While jobs run, the process holding some of the running agents is SIGKILLed together with one of its
agents that is running a job (a lost host): its other agents reconnect to the survivors and reclaim their jobs;
the survivors mark it dead, take its duties, and turn the lost agent's job ``recovering``, which fails when the
agents' recovery window ends. Every job runs exactly once (each step leaves one marker file per execution; the
lost agent's job ran once and failed) and no run is left unfinished.

There are as many jobs as agents, so no job waits for a slot: what is tested is the loss of a process, not how
the dispatcher refills a slot an agent has not freed yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from anyio.abc import Process

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.stores import PgSourceStore
from kici_core.source_records import GenericSource
from tests.support import pg as _pg
from tests.support.agents import lock_repo
from tests.support.balancer import Balancer
from tests.support.orchestrator import OrchestratorProcess, clean_env, kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

ORG = "acme"
ADMIN_TOKEN = "kat-admin-cluster-" + "5" * 24
NAMES = ("orch-0", "orch-1", "orch-2")
VICTIM = "orch-1"
AGENTS = 6
RUNS = 6
TERMINAL = ("success", "failed", "cancelled")
FAST = {
    "KICI_CLUSTER_HEARTBEAT_INTERVAL_MS": "500",
    "KICI_CLUSTER_INSTANCE_TIMEOUT_MS": "3000",
    "KICI_AGENT_MAX_RECONNECT_DELAY_MS": "3000",
    "KICI_DISPATCH_ACK_TIMEOUT_MS": "2000",
    "KICI_DISPATCH_SWEEP_INTERVAL_MS": "500",  # the dead process's expired recovery window is found soon
    "KICI_PROCESSING_WORKERS": "0",
}


async def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        conn.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
        cur = await conn.execute(sql, args)  # type: ignore[arg-type]
        return [dict(r) for r in await cur.fetchall()]  # type: ignore[call-overload]


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(url)).json()


async def until(
    probe: Callable[[], Awaitable[Any]], *, what: str, seen: Callable[[], Awaitable[Any]], limit: float = 90.0
) -> Any:
    """Poll ``probe`` until it returns something truthy; on timeout fail naming ``what`` and showing ``seen()``."""
    try:
        with anyio.fail_after(limit):
            while not (found := await probe()):  # noqa: ASYNC110 - external processes give no event to wait on
                await anyio.sleep(0.2)  # polling interval of a bounded wait on external processes
            return found
    except TimeoutError:
        raise AssertionError(f"{what}: not reached within {limit} s; saw {await seen()}") from None


@asynccontextmanager
async def orchestrators(url: str, tmp: Path) -> AsyncIterator[list[OrchestratorProcess]]:
    procs = [
        OrchestratorProcess(
            "kici-standalone",
            clean_env(
                KICI_MODE="independent",
                KICI_DATABASE_URL=url,
                KICI_SECRET_KEY="ce" * 32,
                KICI_AGENT_AUTH="none",
                KICI_BOOTSTRAP_ADMIN_TOKEN=ADMIN_TOKEN,
                KICI_ALLOW_LOCAL_SOURCES="true",
                KICI_CLUSTER_INSTANCE_ID=name,
                KICI_DATA_DIR=str(tmp / name),
                KICI_LOG_LEVEL="info",
                **FAST,
            ),
        )
        for name in NAMES
    ]
    try:
        for proc in procs:  # one after the other: the first applies the migrations
            await anyio.to_thread.run_sync(proc.start)
        yield procs
    finally:
        for proc in procs:
            if proc.running:
                await anyio.to_thread.run_sync(proc.stop)
        for name, proc in zip(NAMES, procs, strict=True):  # kept for a failure's post-mortem
            (tmp / f"{name}.log").write_text("\n".join(proc.lines))


async def start_agent(url: str, agent_id: str, work: Path) -> Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env.update(
        {
            "KICI_ORCHESTRATOR_URL": url,
            "KICI_AGENT_ID": agent_id,
            "KICI_AGENT_LABELS": "e2e",
            "KICI_AGENT_WORK_DIR": str(work / agent_id),
        }
    )
    return await anyio.open_process(
        [sys.executable, "-m", "kici_runtime.agent", "--log-level", "WARNING"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def push(base: str, repo: Path, sha: str) -> None:
    body = {
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": sha,
        "repository": {"full_name": "acme/repo", "name": "repo", "default_branch": "main", "clone_url": repo.as_uri()},
        "sender": {"login": "t", "id": 1},
    }
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.post(
            f"/webhook/{ORG}/generic/repo",
            json=body,
            headers={"x-event-type": "push", "x-delivery-id": str(uuid.uuid4())},
        )
    assert r.status_code in (200, 202), r.text


async def test_three_processes_one_killed_mid_run_every_job_runs_exactly_once(db_url: str, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    step = {"name": "work", "run": f'touch "{markers}/$KICI_JOB_ID.$(date +%s%N)"; sleep 3'}
    repo, sha = lock_repo(
        tmp_path,
        {
            "ci": [
                {
                    "_type": "static",
                    "name": "build",
                    "runsOn": [{"kind": "exact", "value": "e2e"}],
                    "needs": [],
                    "steps": [step],
                }
            ]
        },
    )
    agents: list[Process] = []
    async with orchestrators(db_url, tmp_path) as procs, anyio.create_task_group() as tg:
        by_name = dict(zip(NAMES, procs, strict=True))
        async with Database(db_url, max_size=2) as db:
            source_id = str(uuid.uuid4())
            await PgSourceStore(db).add_generic(
                GenericSource(
                    id=source_id,
                    org_id=ORG,
                    name="repo",
                    routing_key=f"generic:{ORG}:{source_id}",
                    provider_type="local",
                    verification_method="none",
                    git_config={"url": repo.as_uri()},
                )
            )
        balancer = Balancer([p.port for p in procs])
        lb_port = await tg.start(balancer.serve)

        async def placement() -> dict[str, int]:
            rows = await query(
                db_url,
                "SELECT connected_instance AS i, count(*) AS n FROM agents"
                " WHERE connected_instance IS NOT NULL GROUP BY 1",
            )
            return {r["i"]: int(r["n"]) for r in rows}

        async def state() -> Any:
            return {
                "placement": await placement(),
                "runs": await query(db_url, "SELECT status, count(*) FROM execution_runs GROUP BY 1"),
                "jobs": await query(
                    db_url,
                    "SELECT j.status, j.agent_id, q.status AS queue, a.connected_instance"
                    " FROM execution_jobs j LEFT JOIN dispatch_queue q ON q.id = j.job_id"
                    " LEFT JOIN agents a ON a.agent_id = j.agent_id",
                ),
                "routed": balancer.routed,
            }

        try:
            for n in range(AGENTS):
                agents.append(await start_agent(f"ws://127.0.0.1:{lb_port}/ws", f"agent-{n}", tmp_path / "work"))

            async def spread() -> bool:
                return await placement() == {name: AGENTS // len(NAMES) for name in NAMES}

            await until(spread, what="two agents registered with each orchestrator", seen=state)
            health = await get_json(f"{procs[0].url}/cluster/health")
            assert health["agentCount"] == AGENTS and health["connectedPeers"] == 2, health

            for n in range(RUNS):  # webhooks to all three processes
                await push(procs[n % len(procs)].url, repo, sha)

            async def victim_runs_a_job() -> list[dict[str, Any]]:
                # "running" is reported before the step starts: only a job whose step has left its marker has
                # certainly run once when its agent is killed
                started = {marker.name.split(".")[0] for marker in markers.iterdir()}
                rows = await query(
                    db_url,
                    "SELECT j.job_id::text, j.run_id::text, j.agent_id FROM execution_jobs j"
                    " JOIN agents a ON a.agent_id = j.agent_id WHERE j.status = 'running'"
                    " AND a.connected_instance = %s ORDER BY j.agent_id",
                    VICTIM,
                )
                return [r for r in rows if r["job_id"] in started]

            lost = (await until(victim_runs_a_job, what=f"a job running on an agent of {VICTIM}", seen=state))[0]
            by_name[VICTIM].kill()  # SIGKILL: no goodbye to its agents, no database cleanup
            agents[int(lost["agent_id"].split("-")[1])].kill()  # ... and one of its agents, mid-job, for good

            async def all_runs_finished() -> bool:
                rows = await query(db_url, "SELECT status FROM execution_runs")
                return len(rows) == RUNS and all(r["status"] in TERMINAL for r in rows)

            await until(all_runs_finished, what="every run finished after the kill", seen=state, limit=120)
            jobs = await query(
                db_url, "SELECT job_id::text, run_id::text, job_name, status, error_message FROM execution_jobs"
            )
            assert len(jobs) == RUNS
            by_job = {j["job_id"]: j for j in jobs}
            assert (by_job[lost["job_id"]]["status"], by_job[lost["job_id"]]["error_message"]) == (
                "failed",
                "Job failed: agent disconnected and did not reconnect within the recovery window",
            )
            others = [j for j in jobs if j["run_id"] != lost["run_id"]]
            bad = [(j["job_name"], j["status"], j["error_message"]) for j in others if j["status"] != "success"]
            assert bad == [], await state()
            ran: dict[str, int] = {}
            for marker in markers.iterdir():
                job_id = marker.name.split(".")[0]
                ran[job_id] = ran.get(job_id, 0) + 1
            assert ran == {j["job_id"]: 1 for j in jobs}, "a job ran twice or not at all"
            runs = await query(db_url, "SELECT run_id::text, status FROM execution_runs")
            assert {r["run_id"]: r["status"] for r in runs} == {
                r["run_id"]: "failed" if r["run_id"] == lost["run_id"] else "success" for r in runs
            }

            async def victim_recovered() -> dict[str, Any] | None:
                body = await get_json(f"{procs[2].url}/cluster/health")
                rows = {i["instanceId"]: i for i in body["instances"]}
                return (
                    body
                    if body["status"] == "healthy"
                    and rows[VICTIM]["state"] == "dead"
                    and rows[VICTIM]["recoveredBy"] in ("orch-0", "orch-2")
                    else None
                )

            health = await until(
                victim_recovered,
                what=f"{VICTIM} seen dead and recovered by a survivor",
                seen=lambda: get_json(f"{procs[2].url}/cluster/health"),
            )
            assert health["agentCount"] == AGENTS - 1 and health["connectedPeers"] == 1  # one agent was lost
            assert sorted(await placement()) == ["orch-0", "orch-2"]
            duties = {d["duty"]: d["instanceId"] for d in health["duties"]}
            assert duties["instance-recovery"] in ("orch-0", "orch-2")
            assert duties["dispatch-sweeps"] in ("orch-0", "orch-2", VICTIM)

            out = await kici_admin(procs[0].url, ADMIN_TOKEN, "cluster", "status")
            assert "orch-1" in out.stdout and "dead" in out.stdout and "instance-recovery" in out.stdout, out.stdout
            listed = json.loads((await kici_admin(procs[0].url, ADMIN_TOKEN, "cluster", "status", "--json")).stdout)
            assert {a["instanceId"] for a in listed["agents"]} == {"orch-0", "orch-2"}
        finally:
            for proc in agents:
                if proc.returncode is None:
                    proc.kill()
                with anyio.fail_after(10):
                    await proc.wait()
                await proc.aclose()
            tg.cancel_scope.cancel()
