"""Hostile agents against the real orchestrator: writing to another agent's job, taking over another token's
agent id, and secrets in debug logs (the ``kici-standalone`` and ``kici-agent`` processes at ``DEBUG``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kici_adapters import metrics
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.stores import PgTokenStore
from kici_core.token_records import AgentToken
from tests.e2e.test_agents_e2e import Harness, _job, make_repo
from tests.support import pg as _pg
from tests.support.orchestrator import OrchestratorProcess, clean_env, kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

SECRET_KEY = "ef" * 32
ADMIN = "kat-admin-hostile-" + "7" * 24
T1 = "kat_" + "1a" * 32
T2 = "kat_" + "2b" * 32


@pytest.fixture
async def harness(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with Database(db_url, max_size=2) as db:
        for text in (T1, T2):
            await PgTokenStore(db).create_agent_token(
                AgentToken(id=str(uuid.uuid4()), token_prefix=text[:12]), hashlib.sha256(text.encode()).hexdigest()
            )
    h = Harness(
        db_url,
        tmp_path,
        {"KICI_AGENT_AUTH": "token", "KICI_SECRET_KEY": SECRET_KEY, "KICI_BOOTSTRAP_ADMIN_TOKEN": ADMIN},
    )
    async with anyio.create_task_group() as tg:
        await h.start(tg)
        try:
            yield h
        finally:
            await h.stop()


def _msg(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "messageId": str(uuid.uuid4()), "timestamp": 1, **fields})


async def _agent(h: Harness, agent_id: str, token: str, labels: list[str]) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{h.port}/ws")
    await ws.send(json.dumps({"type": "auth.request", "token": token, "protocolVersion": 1}))
    assert json.loads(await ws.recv())["type"] == "auth.success"
    await ws.send(_msg("agent.register", agentId=agent_id, labels=labels))
    reply = json.loads(await ws.recv())
    assert reply["type"] == "register.ack", reply
    return ws


async def _refused(h: Harness, agent_id: str, token: str) -> tuple[int, str]:
    async with connect(f"ws://127.0.0.1:{h.port}/ws") as ws:
        await ws.send(json.dumps({"type": "auth.request", "token": token, "protocolVersion": 1}))
        assert json.loads(await ws.recv())["type"] == "auth.success"
        await ws.send(_msg("agent.register", agentId=agent_id, labels=["x"]))
        with anyio.fail_after(30):
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code, exc.rcvd.reason


async def _next(ws: ClientConnection, kind: str) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == kind:
                return dict(msg)


def _dropped() -> float:
    return metrics.REGISTRY.get_sample_value("kici_agent_messages_dropped_total", {"reason": "job_not_assigned"}) or 0.0


async def test_an_agent_cannot_write_to_another_agents_job(harness: Harness, tmp_path: Path) -> None:
    h = harness
    repo, sha = make_repo(tmp_path, [_job("build", ["linux"], [{"name": "s", "run": "true"}])])
    await h.add_local_source(repo)
    owner = await _agent(h, "owner", T1, ["linux"])
    intruder = await _agent(h, "intruder", T2, ["other"])
    await h.push(repo, sha)
    dispatch = await _next(owner, "job.dispatch")
    ids = {"runId": dispatch["runId"], "jobId": dispatch["jobId"]}
    for frame in (
        _msg("job.ack", **ids),
        _msg("job.status", state="running", **ids),
        _msg("step.status", stepIndex=0, stepName="s", state="success", **ids),
        _msg("log.chunk", stepIndex=0, lines=["owner line"], **ids),
        _msg("job.status", state="success", **ids),
    ):
        await owner.send(frame)
    await h.wait_for(lambda: _job_status(h, ids["jobId"], "success"), what="the owner finished its job")

    before = _dropped()
    for frame in (
        _msg("log.chunk", stepIndex=0, lines=["pwned"], **ids),
        _msg("step.status", stepIndex=7, stepName="injected", state="failed", **ids),
        _msg("job.status", state="failed", data={"error": "pwned"}, **ids),
    ):
        await intruder.send(frame)

    async def counted() -> bool:
        return _dropped() >= before + 3

    await h.wait_for(counted, what="the intruder's three messages dropped with reason job_not_assigned")
    logs = await h.query("SELECT content FROM log_chunks WHERE job_id = %(j)s ORDER BY seq", j=ids["jobId"])
    assert [r["content"] for r in logs] == ["owner line"]
    steps = await h.query("SELECT step_index FROM execution_steps WHERE job_id = %(j)s", j=ids["jobId"])
    assert [r["step_index"] for r in steps] == [0]
    assert await _job_status(h, ids["jobId"], "success")
    # the owner's own late message is still accepted
    await owner.send(_msg("log.chunk", stepIndex=0, lines=["owner late line"], **ids))

    async def late() -> bool:
        rows = await h.query(
            "SELECT 1 FROM log_chunks WHERE job_id = %(j)s AND content = 'owner late line'", j=ids["jobId"]
        )
        return bool(rows)

    await h.wait_for(late, what="the owner's late log line")
    await owner.close()
    await intruder.close()


async def _job_status(h: Harness, job_id: str, status: str) -> bool:
    rows = await h.query("SELECT status FROM execution_jobs WHERE job_id = %(j)s", j=job_id)
    return bool(rows) and rows[0]["status"] == status


async def test_an_agent_id_stays_with_the_token_that_first_registered_it(harness: Harness) -> None:
    h = harness
    first = await _agent(h, "builder-1", T1, ["x"])
    assert await _refused(h, "builder-1", T2) == (4003, "AgentId already registered with a different token")
    await first.close()

    async def gone() -> bool:
        assert h.orch is not None and h.orch.agents is not None
        return "builder-1" not in h.orch.agents.core.agent_ids()

    await h.wait_for(gone, what="builder-1 disconnected")
    # the victim is away: another token still cannot take over its id; its own token can come back
    assert await _refused(h, "builder-1", T2) == (4003, "AgentId already registered with a different token")
    again = await _agent(h, "builder-1", T1, ["x"])
    await again.close()
    await h.wait_for(gone, what="builder-1 disconnected again")

    # an admin releases the id: the next token to register it keeps it
    out = await kici_admin(h.base, ADMIN, "agent-token", "release", "builder-1")
    assert "Agent id builder-1 released" in out.stdout
    taken = await _agent(h, "builder-1", T2, ["x"])
    await taken.close()
    assert await _refused(h, "builder-1", T1) == (4003, "AgentId already registered with a different token")
    missing = await kici_admin(h.base, ADMIN, "agent-token", "release", "nobody", check=False)
    assert missing.code != 0 and "Agent not found or not bound to a token" in missing.stdout + missing.stderr


async def test_no_part_of_a_token_reaches_the_debug_logs(db_url: str, tmp_path: Path) -> None:
    """At DEBUG the websockets frame logger used to print the first characters of the agent token, in the
    orchestrator's log and in the agent's. Neither log holds any 10-character piece of the token now."""
    env = clean_env(
        KICI_MODE="independent",
        KICI_DATABASE_URL=db_url,
        KICI_SECRET_KEY=SECRET_KEY,
        KICI_BOOTSTRAP_ADMIN_TOKEN=ADMIN,
        KICI_DATA_DIR=str(tmp_path / "data"),
        KICI_LOG_LEVEL="debug",
        KICI_AGENT_AUTH="token",
    )
    orch = await anyio.to_thread.run_sync(OrchestratorProcess("kici-standalone", env).start)
    agent: Process | None = None
    try:
        created = json.loads((await kici_admin(orch.url, ADMIN, "agent-token", "create", "--json")).stdout)
        token = created["token"]
        agent_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
            "KICI_ORCHESTRATOR_URL": f"ws://127.0.0.1:{orch.port}/ws",
            "KICI_AGENT_ID": "debug-agent",
            "KICI_AGENT_LABELS": "linux",
            "KICI_AGENT_WORK_DIR": str(tmp_path / "work"),
            "KICI_AGENT_TOKEN": token,
        }
        agent_log = tmp_path / "agent.log"
        with agent_log.open("wb") as out:
            agent = await anyio.open_process(
                [sys.executable, "-m", "kici_runtime.agent", "--log-level", "DEBUG"],
                env=agent_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

            async def registered() -> bool:
                return orch.log_count('"agentId":"debug-agent"') > 0 and orch.log_count("Agent registered") > 0

            with anyio.fail_after(60):
                while not await registered():  # noqa: ASYNC110 - a subprocess's log gives no event to wait on
                    await anyio.sleep(0.1)
            agent.terminate()
            with anyio.fail_after(60):
                await agent.wait()
        texts = {"orchestrator": orch.tail(100_000), "agent": agent_log.read_text(errors="replace")}
        assert " DEBUG " in texts["agent"]  # the agent did log at DEBUG
        secret = token[len("kat_") :]
        pieces = {secret[i : i + 10] for i in range(len(secret) - 9)}  # the frame dumps showed 11 characters
        for name, text in texts.items():
            leaked = sorted(p for p in pieces if p in text)
            assert not leaked, f"{name} log holds part of the agent token: {leaked[:3]}"
    finally:
        if agent is not None and agent.returncode is None:
            agent.kill()
            with anyio.fail_after(60):
                await agent.wait()
        orch.stop()
