"""Agents end to end: the real orchestrator app (uvicorn on loopback, embedded PostgreSQL), real ``kici-agent``
subprocesses, and a ``local`` source whose repository is a git repo in a temp directory.

A push to the repository runs a workflow with ``needs``, a matrix and a failing step; jobs land only on agents
whose labels admit them; ``maxConcurrency`` is never exceeded; an agent killed mid-job has its job re-queued or
failed per spec while another agent finishes the work; an orchestrator restart mid-run loses no job and runs none
twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.stores import PgSourceStore
from kici_core.source_records import GenericSource
from kici_runtime.config.settings import load_settings
from kici_runtime.orchestrator import wiring
from tests.support import pg as _pg
from tests.support import waits

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

ORG = "acme"
SOURCE = "repo"
TERMINAL = ("success", "failed", "cancelled")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args],
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    ).stdout.strip()


def _job(
    name: str,
    labels: list[str],
    steps: list[dict[str, Any]],
    *,
    needs: list[Any] | None = None,
    matrix: dict[str, Any] | None = None,
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "exact", "value": v} for v in labels],
        "needs": needs or [],
        "steps": steps,
    }
    if matrix is not None:
        job["matrix"] = {"_type": "static", "values": matrix}
    return job


def make_repo(root: Path, jobs: list[dict[str, Any]]) -> tuple[Path, str]:
    """A git repo on ``main`` whose lock file has one workflow ``ci`` (push to main) with ``jobs``."""
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    lock = {
        "schemaVersion": 29,
        "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
        "contentHash": "h",
        "workflows": [
            {
                "name": "ci",
                "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
                "contentHash": "w",
                "compileSchemaVersion": 5,
                "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
                "jobs": jobs,
            }
        ],
    }
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    (repo / "README.md").write_text("hello\n")
    _git(repo.parent, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    return repo, _git(repo, "rev-parse", "HEAD")


class Harness:
    """One orchestrator under uvicorn plus helpers; ``restart()`` stops and starts it on the same port."""

    def __init__(self, db_url: str, tmp: Path, env: dict[str, str]) -> None:
        self.db_url = db_url
        self.tmp = tmp
        self.env = env
        self.port = 0
        self.orch: wiring.Orchestrator | None = None
        self.agents: dict[str, Process] = {}
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    def settings_env(self) -> dict[str, str]:
        return {
            "KICI_MODE": "independent",
            "KICI_DATABASE_URL": self.db_url,
            "KICI_HOST": "127.0.0.1",
            "KICI_PORT": str(self.port),
            "KICI_DATA_DIR": str(self.tmp / "data"),
            "KICI_AGENT_AUTH": "none",
            "KICI_CLUSTER_INSTANCE_ID": "e2e",
            "KICI_AUTO_MIGRATE": "false",
            "KICI_SECRET_KEY": "ab" * 32,
            "KICI_ALLOW_LOCAL_SOURCES": "true",
            **self.env,
        }

    async def start(self, tg: Any) -> None:
        """Serve the app on ``port`` (a free one the first time) with the worker and the agent hub running."""
        settings = load_settings(self.settings_env(), "standalone", default_config_path=None)
        ready = anyio.Event()
        self._stop, self._stopped = anyio.Event(), anyio.Event()

        async def run() -> None:
            assert self._stop is not None and self._stopped is not None
            try:
                async with wiring.orchestrator(settings) as orch:
                    self.orch = orch
                    server = wiring._Server(
                        wiring.server_config(orch.app, settings, port=self.port, graceful_shutdown=5)
                    )
                    served = anyio.Event()

                    async def serve() -> None:
                        try:
                            await server.serve()
                        finally:
                            served.set()

                    async with anyio.create_task_group() as inner:
                        inner.start_soon(serve)
                        with waits.within(30, "uvicorn to start serving", lambda: {"served": served.is_set()}):
                            while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                                await anyio.sleep(0.02)
                        self.port = server.servers[0].sockets[0].getsockname()[1]
                        inner.start_soon(orch.worker.run)
                        assert orch.agents is not None
                        inner.start_soon(orch.agents.run)
                        ready.set()
                        await self._stop.wait()
                        assert orch.agent_endpoint is not None
                        await orch.agent_endpoint.close_all()
                        server.should_exit = True
                        with waits.within(20, "uvicorn to stop serving"):
                            await served.wait()
                        inner.cancel_scope.cancel()
            finally:
                self._stopped.set()

        tg.start_soon(run)
        with waits.within(
            60,
            "the orchestrator to start (app, worker, agent hub)",
            lambda: {"stopped": self._stopped is not None and self._stopped.is_set()},
        ):
            await ready.wait()

    async def stop(self) -> None:
        assert self._stop is not None and self._stopped is not None
        self._stop.set()
        with waits.within(30, "the orchestrator to stop"):
            await self._stopped.wait()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def add_local_source(self, repo: Path) -> None:
        db = Database(self.db_url, max_size=2)
        async with db:
            source_id = str(uuid.uuid4())
            await PgSourceStore(db).add_generic(
                GenericSource(
                    id=source_id,
                    org_id=ORG,
                    name=SOURCE,
                    routing_key=f"generic:{ORG}:{source_id}",
                    provider_type="local",
                    verification_method="none",
                    git_config={"url": repo.as_uri()},
                )
            )

    async def push(self, repo: Path, sha: str) -> None:
        body = {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {
                "full_name": "acme/repo",
                "name": "repo",
                "default_branch": "main",
                "clone_url": repo.as_uri(),
            },
            "sender": {"login": "t", "id": 1},
        }
        async with httpx.AsyncClient(base_url=self.base) as http:
            r = await http.post(
                f"/webhook/{ORG}/generic/{SOURCE}",
                json=body,
                headers={"x-event-type": "push", "x-delivery-id": str(uuid.uuid4())},
            )
            assert r.status_code in (200, 202), r.text

    async def start_agent(self, agent_id: str, labels: str, *, max_concurrency: int = 1) -> Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
        env.update(
            {
                "KICI_ORCHESTRATOR_URL": f"ws://127.0.0.1:{self.port}/ws",
                "KICI_AGENT_ID": agent_id,
                "KICI_AGENT_LABELS": labels,
                "KICI_AGENT_MAX_CONCURRENCY": str(max_concurrency),
                "KICI_AGENT_WORK_DIR": str(self.tmp / "work" / agent_id),
            }
        )
        proc = await anyio.open_process(
            [sys.executable, "-m", "kici_runtime.agent", "--log-level", "WARNING"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.agents[agent_id] = proc
        await self.wait_for(
            lambda: self._registered(agent_id),
            what=f"agent {agent_id} to register",
            seen=lambda: {"connected": self._connected(), "agent exit code": proc.returncode},
        )
        return proc

    def _connected(self) -> list[str]:
        assert self.orch is not None and self.orch.agents is not None
        return list(self.orch.agents.core.agent_ids())

    async def _registered(self, agent_id: str) -> bool:
        return agent_id in self._connected()

    async def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        assert self.orch is not None
        async with self.orch.db.connection() as conn:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
            return [dict(r) for r in await cur.fetchall()]

    async def wait_for(self, check: Any, *, what: str, limit: float = 60.0, seen: Any = None) -> Any:
        """Poll an external condition (subprocesses and the database give no events to wait on) until it returns
        something truthy, and return that; on timeout say ``what`` was awaited and what ``seen`` (default:
        :meth:`state`) shows."""
        return await waits.until(check, what=what, bound=limit, seen=seen or self.state)

    async def state(self) -> dict[str, Any]:
        """What a timed-out wait reports: runs, jobs and queue rows by status, and the dispatcher's agents."""
        runs = await self.query("SELECT run_id::text, status, failure_reason FROM execution_runs ORDER BY created_at")
        jobs = await self.query(
            "SELECT job_name, status, agent_id, error_message FROM execution_jobs"
            " WHERE status <> 'success' ORDER BY created_at"
        )
        queue = await self.query(
            "SELECT status, dispatch_attempts, count(*) AS n FROM dispatch_queue GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert self.orch is not None and self.orch.agents is not None
        core = self.orch.agents.core
        agents = {a: view for a in core.agent_ids() if (view := core.agent(a)) is not None}
        return {
            "runs": runs,
            "jobs not succeeded": jobs[:40],
            "queue": queue,
            "agents": {
                a: {"jobs": len(v.active_jobs), "max": v.max_concurrency, "held_until": v.held_until}
                for a, v in agents.items()
            },
            "agent exit codes": {a: p.returncode for a, p in self.agents.items()},
        }

    async def runs_done(self, count: int, *, limit: float = 90) -> list[dict[str, Any]]:
        """Wait until ``count`` runs exist and all are terminal; returns them."""

        async def done() -> list[dict[str, Any]]:
            rows = await self.query("SELECT * FROM execution_runs")
            return rows if len(rows) == count and all(r["status"] in TERMINAL for r in rows) else []

        rows: list[dict[str, Any]] = await waits.until(
            done, what=f"{count} run(s) to finish", bound=limit, seen=self.state
        )
        return rows

    async def run_done(self) -> dict[str, Any]:
        return (await self.runs_done(1))[0]

    async def jobs(self) -> dict[str, dict[str, Any]]:
        return {r["job_name"]: r for r in await self.query("SELECT * FROM execution_jobs")}

    async def kill_agents(self) -> None:
        for agent_id, proc in self.agents.items():
            if proc.returncode is None:
                proc.kill()
            with waits.within(10, f"agent {agent_id} (pid {proc.pid}) to exit after SIGKILL"):
                await proc.wait()
            await proc.aclose()


@asynccontextmanager
async def harness(db_url: str, tmp: Path, **env: str) -> AsyncIterator[tuple[Harness, Any]]:
    h = Harness(db_url, tmp, {k: str(v) for k, v in env.items()})
    async with anyio.create_task_group() as tg:
        await h.start(tg)
        try:
            yield h, tg
        finally:
            await h.kill_agents()
            await h.stop()


async def _migrated(db_url: str) -> str:
    return db_url


# ------------------------------------------------------------------------------------------------ tests
async def test_push_runs_needs_matrix_and_failing_step_on_eligible_agents(db_url: str, tmp_path: Path) -> None:
    repo, sha = make_repo(
        tmp_path,
        [
            _job("build", ["linux-a"], [{"name": "compile", "run": "echo built > out.txt && cat out.txt"}]),
            _job(
                "test",
                ["shared"],
                [
                    {
                        "name": "check",
                        "run": 'echo "testing $KICI_JOB_NAME"; case "$KICI_JOB_NAME" in *bad*) exit 1;; esac',
                    }
                ],
                needs=["build"],
                matrix={"F": ["good", "bad"]},
            ),
            _job("deploy", ["linux-a"], [{"name": "ship", "run": "echo shipping"}], needs=["test"]),
            _job(
                "always",
                ["shared"],
                [{"name": "report", "run": "echo report"}],
                needs=[{"name": "test", "runOn": ["success", "failed"]}],
            ),
        ],
    )
    async with harness(db_url, tmp_path) as (h, _):
        await h.add_local_source(repo)
        await h.start_agent("agent-a", "linux-a,shared")
        await h.start_agent("agent-b", "shared")
        await h.push(repo, sha)
        run = await h.run_done()
        jobs = await h.jobs()
        assert run["status"] == "failed"
        assert run["failure_reason"] == "Failed jobs: test (bad)"
        assert jobs["build"]["status"] == "success" and jobs["build"]["agent_id"] == "agent-a"
        assert jobs["test (good)"]["status"] == "success"
        assert jobs["test (bad)"]["status"] == "failed"
        assert jobs["deploy"]["status"] == "skipped"
        assert jobs["deploy"]["error_message"] == "upstream_unmet: test (bad) (failed)"
        assert jobs["always"]["status"] == "success"
        assert {jobs[n]["agent_id"] for n in ("test (good)", "test (bad)", "always")} <= {"agent-a", "agent-b"}
        steps = await h.query(
            "SELECT s.status, j.job_name FROM execution_steps s JOIN execution_jobs j"
            " ON j.job_id = s.job_id WHERE s.step_index >= 0"
        )
        assert ("failed", "test (bad)") in {(s["status"], s["job_name"]) for s in steps}
        logs = await h.query(
            "SELECT c.content FROM log_chunks c JOIN execution_jobs j ON j.job_id = c.job_id"
            " WHERE j.job_name = 'build' AND c.step_index = 0"
        )
        assert any("built" in (c["content"] or "") for c in logs)
        rows = await h.query("SELECT status FROM dispatch_queue")
        assert {r["status"] for r in rows} == {"completed"}


async def test_jobs_wait_for_a_label_and_max_concurrency_is_respected(db_url: str, tmp_path: Path) -> None:
    steps = [
        {
            "name": "hold",
            "run": "mkdir -p ../../c; touch ../../c/$$; n=$(ls ../../c | wc -l);"
            " echo running=$n; sleep 1; rm ../../c/$$",
        }
    ]
    repo, sha = make_repo(
        tmp_path,
        [
            _job("w", ["pool"], steps, matrix={"i": ["1", "2", "3", "4", "5", "6"]}),
            _job("gpu", ["gpu"], [{"name": "g", "run": "true"}]),
        ],
    )
    async with harness(db_url, tmp_path) as (h, _):
        await h.add_local_source(repo)
        await h.start_agent("pool-1", "pool", max_concurrency=2)
        await h.push(repo, sha)

        async def pool_done() -> list[dict[str, Any]]:
            rows = await h.query("SELECT job_name, status, error_message FROM execution_jobs WHERE base_name = 'w'")
            return rows if len(rows) == 6 and all(r["status"] in TERMINAL for r in rows) else []

        pool = await h.wait_for(pool_done, what="the six pool jobs to finish", limit=90)
        assert {r["status"] for r in pool} == {"success"}, pool
        # Never more than maxConcurrency jobs of the one agent at once (the steps count their siblings).
        logs = await h.query("SELECT content FROM log_chunks WHERE content LIKE 'running=%%'")
        counts = [int(c["content"].split("=")[1]) for c in logs]
        assert counts and max(counts) <= 2
        gpu = (await h.jobs())["gpu"]
        assert gpu["status"] == "pending" and gpu["agent_id"] is None
        assert h.orch is not None and h.orch.agents is not None
        reason = h.orch.agents.explain([{"kind": "exact", "value": "gpu"}], [])
        assert reason == "no connected agent has 'gpu'"
        await h.start_agent("gpu-1", "gpu")
        run = await h.run_done()
        assert run["status"] == "success"
        assert (await h.jobs())["gpu"]["agent_id"] == "gpu-1"


def soak_repo(root: Path, *, files: int, commits: int) -> tuple[Path, list[str]]:
    """A repository of ``files`` source files whose workflow is a 12-way matrix ``unit`` and a ``report`` job that
    needs it, with ``commits`` commits on ``main`` to push (oldest first)."""
    check = 'test "$(ls src | wc -l)" -eq ' + str(files) + ' && test "$(git rev-parse HEAD)" = "$KICI_SHA"'
    repo, _ = make_repo(
        root,
        [
            _job("unit", ["soak"], [{"name": "check", "run": check}], matrix={"shard": [str(i) for i in range(12)]}),
            _job("report", ["soak"], [{"name": "sum", "run": "echo all shards passed"}], needs=["unit"]),
        ],
    )
    (repo / "src").mkdir()
    for i in range(files):
        (repo / "src" / f"module_{i:03}.py").write_text(f"VALUE = {i}\n\n\ndef value() -> int:\n    return VALUE\n")
    shas = []
    for n in range(commits):
        (repo / "CHANGES.md").write_text(f"change {n}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"change {n}")
        shas.append(_git(repo, "rev-parse", "HEAD"))
    return repo, shas


SOAK_PUSHES = 5


@pytest.mark.parametrize("slots", [pytest.param([1, 1], id="2-agents-max1"), pytest.param([2], id="1-agent-max2")])
async def test_back_to_back_pushes_of_a_matrix_with_a_dependent_job_all_succeed(
    db_url: str, tmp_path: Path, slots: list[int]
) -> None:
    # Every finished job frees its agent's slot while the next dispatch is already on its way: no job may be
    # rejected into failure, and no delivery may be spent on an agent that is still tidying up.
    repo, shas = soak_repo(tmp_path, files=300, commits=SOAK_PUSHES)
    async with harness(db_url, tmp_path) as (h, _):
        await h.add_local_source(repo)
        for n, max_concurrency in enumerate(slots):
            await h.start_agent(f"soak-{n}", "soak", max_concurrency=max_concurrency)
        for sha in shas:
            await h.push(repo, sha)
        runs = await h.runs_done(SOAK_PUSHES, limit=240)
        assert [r["status"] for r in runs] == ["success"] * SOAK_PUSHES, await h.state()
        assert sorted(r["sha"] for r in runs) == sorted(shas)
        jobs = await h.query("SELECT job_name, status FROM execution_jobs")
        assert len(jobs) == SOAK_PUSHES * 13 and {j["status"] for j in jobs} == {"success"}
        queue = await h.query("SELECT status, dispatch_attempts FROM dispatch_queue")
        assert {(q["status"], q["dispatch_attempts"]) for q in queue} == {("completed", 0)}


async def test_sigkilled_agent_job_fails_after_recovery_and_another_agent_finishes(db_url: str, tmp_path: Path) -> None:
    repo, sha = make_repo(
        tmp_path,
        [
            _job("slow", ["x"], [{"name": "sleep", "run": "sleep 30"}]),
            _job("after", ["x"], [{"name": "a", "run": "echo after"}], needs=[{"name": "slow", "runOn": ["failed"]}]),
        ],
    )
    async with harness(db_url, tmp_path, KICI_AGENT_MAX_RECONNECT_DELAY_MS="1000") as (h, _):
        await h.add_local_source(repo)
        first = await h.start_agent("victim", "x")
        await h.push(repo, sha)

        async def started() -> bool:
            return (await h.jobs()).get("slow", {}).get("status") == "running"

        await h.wait_for(started, what="slow running")
        first.send_signal(signal.SIGKILL)
        await h.start_agent("rescuer", "x")
        run = await h.run_done()
        jobs = await h.jobs()
        assert jobs["slow"]["status"] == "failed"
        assert jobs["slow"]["error_message"] == (
            "Job failed: agent disconnected and did not reconnect within the recovery window"
        )
        assert jobs["after"]["status"] == "success" and jobs["after"]["agent_id"] == "rescuer"
        assert run["status"] == "failed"


async def test_orchestrator_restart_mid_run_loses_nothing_and_runs_nothing_twice(db_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    marker.mkdir()
    step = {"name": "count", "run": f'touch "{marker}/$(date +%s%N)-$$"; sleep 3'}
    repo, sha = make_repo(tmp_path, [_job("one", ["r"], [step]), _job("two", ["r"], [step], needs=["one"])])
    async with anyio.create_task_group() as tg:
        h = Harness(db_url, tmp_path, {})
        await h.start(tg)
        try:
            await h.add_local_source(repo)
            await h.start_agent("steady", "r")
            await h.push(repo, sha)

            async def started() -> bool:
                return (await h.jobs()).get("one", {}).get("status") == "running"

            await h.wait_for(started, what="one running")
            await h.stop()
            await h.start(tg)  # same port, same instance id: the agent reconnects and reclaims "one"
            run = await h.run_done()
            jobs = await h.jobs()
            assert run["status"] == "success", jobs
            assert jobs["one"]["status"] == "success" and jobs["two"]["status"] == "success"
            assert len(list(marker.iterdir())) == 2  # each job ran exactly once
        finally:
            await h.kill_agents()
            await h.stop()
