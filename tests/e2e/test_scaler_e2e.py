"""The container auto-scaler end to end, as an operator meets it.

The real orchestrator app (uvicorn on loopback, PostgreSQL, token authentication for agents) with a container
scaler configured against :class:`tests.support.docker_engine.FakeEngine`, a local server speaking the Docker
Engine API on a unix socket. Starting a "container" there starts a real ``kici-agent`` process with the
container's environment (its ephemeral token, labels, agent id), so a job whose labels no running agent has
gets a container, runs in it, and the container is gone afterwards. Also: ``kici-admin runs show`` says why a
job still waits (scaler at capacity, image missing, spawn failed with the engine's message), warm pools, orphan
removal and restart recovery, and two orchestrator processes on one database never spawning twice for a job.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.tokens import PgTokenStore
from kici_runtime.orchestrator.scaler import service as scaler_service
from kici_runtime.orchestrator.scaler import startup
from kici_runtime.orchestrator.scaler.config import load_scaler_config
from tests.e2e.test_agents_e2e import Harness, _job, harness, make_repo
from tests.support import pg as _pg
from tests.support.docker_engine import FakeEngine
from tests.support.orchestrator import kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

TOKEN = "kat-admin-scaler-" + "7" * 24
IMAGE = "kici-agent:test"
ENV = {"KICI_SECRET_KEY": "ab" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": TOKEN, "KICI_AGENT_AUTH": "token"}


def scalers_yaml(socket: Path, *, max_agents: int = 2, warm: int = 0, idle: int = 300) -> str:
    return f"""\
version: 1
globalMaxAgents: 5
scalers:
  - name: fake
    type: container
    maxAgents: {max_agents}
    socketPath: {socket}
    networkIsolation: false
    warmPool: {{ enabled: {str(warm > 0).lower()}, size: {warm}, idleTimeoutSeconds: {idle} }}
    labelSets:
      - labels: [linux, container]
        image: {IMAGE}
        imagePullPolicy: Never
  - name: special
    type: container
    maxAgents: 1
    socketPath: {socket}
    networkIsolation: false
    labelSets:
      - labels: [linux, special]
        image: kici-agent:not-built-here
        imagePullPolicy: IfNotPresent
"""


@asynccontextmanager
async def world(
    db_url: str,
    tmp_path: Path,
    *,
    warm: int = 0,
    idle: int = 300,
    max_agents: int = 2,
    engine: FakeEngine | None = None,
) -> AsyncIterator[tuple[Harness, FakeEngine]]:
    """A fake engine and an orchestrator whose scaler uses it; the scaler loop runs until the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="kici-fe-"))  # unix socket paths must stay short
    try:
        own = engine is None
        with (
            FakeEngine(folder / "docker.sock", images={IMAGE}, run_agents=True)
            if own
            else contextlib.nullcontext(engine)
        ) as fake:
            assert fake is not None
            config = tmp_path / "scalers.yaml"
            config.write_text(scalers_yaml(fake.socket_path, max_agents=max_agents, warm=warm, idle=idle))
            async with harness(db_url, tmp_path, **ENV, KICI_SCALER_CONFIG_PATH=str(config)) as (h, _):
                assert h.orch is not None and h.orch.scaler is not None
                h.orch.scaler.orchestrator_url = f"ws://127.0.0.1:{h.port}/ws"
                async with anyio.create_task_group() as tg:
                    tg.start_soon(h.orch.scaler.run)
                    try:
                        yield h, fake
                    finally:
                        tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def scaler_rows(h: Harness) -> list[dict[str, Any]]:
    return await h.query("SELECT * FROM scaler_agents ORDER BY created_at")


async def wait_rows(h: Harness, what: str, check: Any, limit: float = 60.0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def ok() -> bool:
        nonlocal rows
        rows = await scaler_rows(h)
        return bool(check(rows))

    try:
        await h.wait_for(ok, what=what, limit=limit)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; scaler_agents: {rows}") from None
    return rows


async def show(h: Harness, run_id: str) -> str:
    return (await kici_admin(h.base, TOKEN, "runs", "show", run_id)).stdout


async def test_a_job_no_agent_takes_gets_a_container_runs_there_and_the_container_is_gone(
    db_url: str, tmp_path: Path
) -> None:
    repo, sha = make_repo(
        tmp_path, [_job("build", ["linux", "container"], [{"name": "where", "run": "echo running as $HOSTNAME-agent"}])]
    )
    async with world(db_url, tmp_path) as (h, fake):
        await h.add_local_source(repo)
        await h.push(repo, sha)
        run = await h.run_done()
        assert run["status"] == "success"
        job = (await h.jobs())["build"]
        assert job["agent_id"].startswith("kici-fake-")
        rows = await wait_rows(h, "the container removed", lambda rs: rs and rs[0]["state"] == "removed")
        assert len(rows) == 1
        row = rows[0]
        assert row["agent_id"] == job["agent_id"] and str(row["bound_job_id"]) == str(job["job_id"])
        assert row["error"] == "agent disconnected"
        assert fake.by_name(row["agent_id"]) is None  # deleted from the engine
        created = [body for body in fake.requests if body == ("POST", "/containers/create")]
        assert len(created) == 1
        # the container's agent authenticated with an ephemeral token bound to the label set, now revoked
        tokens = await h.query("SELECT labels, agent_type, created_by, revoked_at, expires_at FROM agent_tokens")
        assert len(tokens) == 1
        token = tokens[0]
        assert token["agent_type"] == "ephemeral" and token["created_by"] == row["agent_id"]
        assert token["labels"] == ["linux", "container"] and token["revoked_at"] is not None
        assert token["expires_at"] is not None
        async with httpx.AsyncClient(base_url=h.base) as http:
            text = (await http.get("/metrics")).text
        assert 'kici_scaler_spawn_duration_seconds_count{scaler="fake"} 1.0' in text


async def test_runs_show_says_why_jobs_wait_capacity_image_and_engine_errors(db_url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hold = [{"name": "hold", "run": f"while [ ! -e {gate} ]; do sleep 0.2; done"}]
    repo, sha = make_repo(
        tmp_path,
        [
            _job("first", ["linux", "container"], hold),
            _job("other", ["linux", "container"], hold),
            _job("after", ["linux", "container"], [{"name": "quick", "run": "true"}], needs=["first", "other"]),
            _job("gpu", ["linux", "special"], [{"name": "never", "run": "true"}]),
        ],
    )
    async with world(db_url, tmp_path, max_agents=1) as (h, fake):
        scaler = h.orch.scaler if h.orch else None
        assert scaler is not None
        scaler.retry_backoff = 3600.0  # a failed spawn stays visible while the test looks at it
        await h.add_local_source(repo)
        await h.push(repo, sha)
        await wait_rows(h, "one container started", lambda rs: any(r["state"] == "running" for r in rs))
        runs = await h.query("SELECT run_id FROM execution_runs")
        run_id = str(runs[0]["run_id"])

        async def reasons() -> dict[str, str]:
            jobs = await h.query(
                "SELECT j.job_name, q.last_provisioning_error FROM execution_jobs j"
                " JOIN dispatch_queue q ON q.id = j.job_id WHERE q.status = 'pending'"
            )
            return {j["job_name"]: j["last_provisioning_error"] for j in jobs}

        async def explained() -> bool:  # one holder runs; the other waits for the scaler's only slot
            r = await reasons()
            return (r.get("gpu") or "").startswith("image ") and any(
                (r.get(n) or "").startswith("scaler fake at capacity") for n in ("first", "other")
            )

        await h.wait_for(explained, what="waiting reasons written")
        out = await show(h, run_id)
        pending = await reasons()
        waiting = next(name for name in ("first", "other") if name in pending)
        line = next(line for line in out.splitlines() if line.startswith(waiting))
        assert "scaler fake at capacity (1/1 agents)" in line
        gpu = next(line for line in out.splitlines() if line.startswith("gpu"))
        assert (
            "image kici-agent:not-built-here missing and the pull failed: pull access denied for "
            "kici-agent, repository does not exist"
        ) in gpu
        # the engine refuses the next container: its own message reaches runs show
        fake.fail("POST", r"^/containers/create$", 500, "mkdir /var/lib/docker/overlay2/x: no space left on device")
        gate.touch()

        async def engine_error() -> bool:
            return "no space left on device" in (await show(h, run_id))

        await h.wait_for(engine_error, what="the engine's error shown by runs show")
        out = await show(h, run_id)
        line = next(line for line in out.splitlines() if "no space left on device" in line)
        assert "container spawn failed: mkdir /var/lib/docker/overlay2/x: no space left on device" in line
        scaler.retry_backoff = 5.0  # the engine recovered: the job gets its container and runs
        scaler.wake()

        async def rest_done() -> bool:
            jobs = await h.jobs()
            return all(jobs[n]["status"] == "success" for n in ("first", "other", "after"))

        await h.wait_for(rest_done, what="the capacity-bound jobs ran one container at a time", limit=90)
        assert (await h.jobs())["gpu"]["status"] == "pending"
        rows = await scaler_rows(h)
        assert {r["error"] for r in rows if r["state"] == "failed"} >= {
            "container spawn failed: mkdir /var/lib/docker/overlay2/x: no space left on device"
        }
        # never more than maxAgents=1 at once: containers ran one after another
        spans = sorted((r["created_at"], r["ended_at"]) for r in rows if r["state"] == "removed")
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), spans


async def test_warm_pool_serves_a_job_then_refills_and_empties_after_idle_timeout(db_url: str, tmp_path: Path) -> None:
    repo, sha = make_repo(tmp_path, [_job("build", ["linux", "container"], [{"name": "s", "run": "true"}])])
    async with world(db_url, tmp_path, warm=1, idle=3600) as (h, fake):
        warm = await wait_rows(
            h,
            "a warm container connected",
            lambda rs: any(r["state"] == "running" and r["bound_job_id"] is None for r in rs),
        )
        first = next(r["agent_id"] for r in warm if r["bound_job_id"] is None)
        assert h.orch is not None and h.orch.agents is not None

        async def connected() -> bool:
            assert h.orch is not None and h.orch.agents is not None
            return first in h.orch.agents.core.agent_ids()

        await h.wait_for(connected, what="the warm agent registered")
        await h.add_local_source(repo)
        await h.push(repo, sha)
        run = await h.run_done()
        assert run["status"] == "success"
        assert (await h.jobs())["build"]["agent_id"] == first  # no new container for the job
        rows = await wait_rows(
            h,
            "the used warm container removed and the pool refilled",
            lambda rs: (
                any(r["agent_id"] == first and r["state"] == "removed" for r in rs)
                and any(r["state"] == "running" for r in rs)
            ),
        )
        assert all(r["bound_job_id"] is None for r in rows), [
            (r["agent_id"], r["bound_job_id"], r["state"], r["error"], r["created_at"].time()) for r in rows
        ]
        assert h.orch.scaler is not None
        h.orch.scaler.config = load_scaler_config_with_idle(tmp_path, fake, idle=1)
        h.orch.scaler._last_demand["fake"] = 0.0  # long ago: the pool is past its idle timeout
        h.orch.scaler.wake()
        rows = await wait_rows(
            h,
            "the pool emptied after its idle timeout",
            lambda rs: all(r["state"] in ("removed", "failed") for r in rs if r["scaler_name"] == "fake"),
        )
        assert [r["error"] for r in rows][-1] == "warm pool idle timeout"
        assert not [c for c in fake.live() if c.labels.get("kici-managed") == "true"]


def load_scaler_config_with_idle(tmp_path: Path, fake: FakeEngine, *, idle: int) -> Any:
    path = tmp_path / "scalers-idle.yaml"
    path.write_text(scalers_yaml(fake.socket_path, warm=1, idle=idle))
    return load_scaler_config(path)


async def test_restart_removes_orphans_and_closes_rows_of_vanished_containers(db_url: str, tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kici-fe-"))
    try:
        with FakeEngine(folder / "docker.sock", images={IMAGE}) as fake:
            config = load_scaler_config(_write(tmp_path / "s.yaml", scalers_yaml(fake.socket_path)))
            db = Database(db_url, max_size=4)
            async with db:
                # what a crashed process left behind: a live row whose container is gone, a live row with its
                # container still there, and a kici-managed container nobody has a row for
                kept = fake.add_container(
                    "kici-fake-kept0001", {"kici-managed": "true", "kici-agent-id": "kici-fake-kept0001"}
                )
                fake.add_container(
                    "kici-fake-orphan01", {"kici-managed": "true", "kici-agent-id": "kici-fake-orphan01"}
                )
                fake.add_container("someone-elses", {"app": "web"})
                async with db.connection() as conn:
                    for agent_id, cid in (("kici-fake-gone0001", "deadbeef"), ("kici-fake-kept0001", kept.id)):
                        await conn.execute(
                            "INSERT INTO scaler_agents (agent_id, scaler_name, label_set, state,"
                            " container_id) VALUES (%s, 'fake', 0, 'running', %s)",
                            (agent_id, cid),
                        )
                prepared = await startup.prepare(config, env={})
                service = scaler_service.ScalerService(
                    prepared,
                    db=db,
                    tokens=PgTokenStore(db),
                    orchestrator_url="ws://127.0.0.1:9/ws",
                    token_ttl_s=60,
                    forwarded_env={},
                    instance_id="test",
                )
                await service._restore()
                names = {c.name for c in fake.live()}
                assert names == {"kici-fake-kept0001", "someone-elses"}
                async with db.connection() as conn:
                    cur = await conn.execute("SELECT agent_id, state, error FROM scaler_agents ORDER BY agent_id")
                    rows = {r["agent_id"]: (r["state"], r["error"]) for r in await cur.fetchall()}
                assert rows == {
                    "kici-fake-gone0001": ("removed", "container gone after an orchestrator restart"),
                    "kici-fake-kept0001": ("running", None),
                }
                # the kept container's agent never connects: after the start timeout a pass removes it
                service._start_timeout = 0.0
                plan = await service.pass_once()
                assert plan is not None and [r.agent_id for r in plan.remove] == ["kici-fake-kept0001"]
                assert {c.name for c in fake.live()} == {"someone-elses"}
                await prepared.aclose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_two_processes_on_one_database_spawn_once_per_job(db_url: str, tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kici-fe-"))
    repo, sha = make_repo(
        tmp_path, [_job(f"j{i}", ["linux", "container"], [{"name": "s", "run": "true"}]) for i in range(3)]
    )
    try:
        with FakeEngine(folder / "docker.sock", images={IMAGE}) as fake:  # containers never connect
            config = load_scaler_config(_write(tmp_path / "s.yaml", scalers_yaml(fake.socket_path, max_agents=5)))
            async with world(db_url, tmp_path, engine=fake, max_agents=5) as (h, _fake):
                await h.add_local_source(repo)
                await h.push(repo, sha)
                db = Database(db_url, max_size=4)
                async with db:
                    prepared = await startup.prepare(config, env={})
                    other = scaler_service.ScalerService(
                        prepared,
                        db=db,
                        tokens=PgTokenStore(db),
                        orchestrator_url="ws://127.0.0.1:9/ws",
                        token_ttl_s=60,
                        forwarded_env={},
                        instance_id="second",
                    )
                    await wait_rows(h, "three containers", lambda rs: len(rs) >= 3)
                    async with anyio.create_task_group() as tg:  # both passes at once, many times
                        for _ in range(5):
                            tg.start_soon(other.pass_once)
                            assert h.orch is not None and h.orch.scaler is not None
                            tg.start_soon(h.orch.scaler.pass_once)
                    await prepared.aclose()
                rows = await scaler_rows(h)
                live = [r for r in rows if r["state"] in ("starting", "running")]
                bound = [str(r["bound_job_id"]) for r in live]
                assert len(bound) == len(set(bound)) == 3, rows
                created = [r for r in fake.requests if r == ("POST", "/containers/create")]
                assert len(created) == 3
    finally:
        shutil.rmtree(folder, ignore_errors=True)
