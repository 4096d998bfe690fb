"""The ``/ws`` protocol against the real app under uvicorn, with a raw ``websockets`` client: handshake phases,
token errors, every close path, malformed and out-of-order messages, and arbitrary frames that never crash it."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.stores import PgTokenStore
from kici_core.token_records import AgentToken
from tests.e2e.test_agents_e2e import Harness
from tests.support import pg as _pg
from tests.support import waits
from tests.support.props import examples

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

TOKEN = "kat_" + "ab" * 32


@pytest.fixture
async def orch(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with Database(db_url, max_size=2) as db:
        await PgTokenStore(db).create_agent_token(
            AgentToken(id=str(uuid.uuid4()), token_prefix=TOKEN[:12]), hashlib.sha256(TOKEN.encode()).hexdigest()
        )
    h = Harness(db_url, tmp_path, {"KICI_AGENT_AUTH": "token"})
    async with anyio.create_task_group() as tg:
        await h.start(tg)
        assert h.orch is not None and h.orch.agent_endpoint is not None
        h.orch.agent_endpoint._auth_timeout = 0.5
        h.orch.agent_endpoint._register_timeout = 0.5
        try:
            yield h
        finally:
            await h.stop()


def register(agent_id: str = "a1", **extra: Any) -> str:
    return json.dumps({"type": "agent.register", "messageId": "m", "agentId": agent_id, "labels": ["x"], **extra})


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with waits.within(10, "the orchestrator to close the agent socket"):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


async def handshake(h: Harness, agent_id: str = "a1") -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{h.port}/ws")
    await ws.send(json.dumps({"type": "auth.request", "token": TOKEN, "protocolVersion": 1}))
    assert json.loads(await ws.recv())["type"] == "auth.success"
    await ws.send(register(agent_id))
    ack = json.loads(await ws.recv())
    assert ack == {"type": "register.ack", "agentId": agent_id, "labels": ["x"], "scalerManaged": False}
    return ws


async def test_token_handshake_and_register_ack(orch: Harness) -> None:
    ws = await handshake(orch)
    await ws.send(json.dumps({"type": "heartbeat", "timestamp": 1}))
    await ws.close()


async def test_compression_without_context_takeover(orch: Harness) -> None:
    """An agent offering ``permessage-deflate`` (the reference agent and upstream's do) gets it without context
    takeover in either direction, so an idle socket keeps no zlib state; large messages flow compressed both
    ways. An agent that offers no compression runs without."""
    ws = await connect(f"ws://127.0.0.1:{orch.port}/ws")
    assert ws.response is not None
    offered = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    assert "permessage-deflate" in offered, offered
    assert "server_no_context_takeover" in offered and "client_no_context_takeover" in offered, offered
    [deflate] = ws.protocol.extensions
    assert isinstance(deflate, PerMessageDeflate)
    assert deflate.local_no_context_takeover and deflate.remote_no_context_takeover
    await ws.send(json.dumps({"type": "auth.request", "token": TOKEN, "protocolVersion": 1}))
    assert json.loads(await ws.recv())["type"] == "auth.success"
    labels = sorted(f"pool-{i:03d}" for i in range(300))
    for _ in range(2):  # the second message needs no context left by the first
        await ws.send(json.dumps({"type": "agent.register", "messageId": "m", "agentId": "big", "labels": labels}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "register.ack" and ack["labels"] == labels
    await ws.close()

    plain = await connect(f"ws://127.0.0.1:{orch.port}/ws", compression=None)
    assert plain.response is not None and "Sec-WebSocket-Extensions" not in plain.response.headers
    assert plain.protocol.extensions == []
    await plain.send(json.dumps({"type": "auth.request", "token": TOKEN, "protocolVersion": 1}))
    assert json.loads(await plain.recv())["type"] == "auth.success"
    await plain.close()


@pytest.mark.parametrize(
    ("first", "code", "reason", "failure"),
    [
        ({"type": "agent.register"}, 4010, "Invalid auth message", "First message must be auth.request"),
        (
            {"type": "auth.request", "token": "kat_nope", "protocolVersion": 1},
            4010,
            "Authentication failed",
            "Invalid or expired token",
        ),
        (
            {"type": "auth.request", "token": "", "protocolVersion": 1},
            4010,
            "Invalid auth message",
            "First message must be auth.request",
        ),
    ],
)
async def test_auth_failures(orch: Harness, first: dict[str, Any], code: int, reason: str, failure: str) -> None:
    async with connect(f"ws://127.0.0.1:{orch.port}/ws") as ws:
        await ws.send(json.dumps(first))
        assert json.loads(await ws.recv()) == {"type": "auth.failure", "reason": failure}
        assert await closed_with(ws) == (code, reason)


async def test_phase_timeouts_close_4002(orch: Harness) -> None:
    async with connect(f"ws://127.0.0.1:{orch.port}/ws") as ws:
        assert await closed_with(ws) == (4002, "Auth timeout")
    async with connect(f"ws://127.0.0.1:{orch.port}/ws") as ws:
        await ws.send(json.dumps({"type": "auth.request", "token": TOKEN, "protocolVersion": 1}))
        assert json.loads(await ws.recv())["type"] == "auth.success"
        assert await closed_with(ws) == (4002, "Registration timeout")


async def test_malformed_and_out_of_order_messages_close_4003(orch: Harness) -> None:
    async with connect(f"ws://127.0.0.1:{orch.port}/ws") as ws:
        await ws.send("{not json")
        assert await closed_with(ws) == (4003, "Malformed JSON")
    async with connect(f"ws://127.0.0.1:{orch.port}/ws") as ws:
        await ws.send(json.dumps({"type": "auth.request", "token": TOKEN, "protocolVersion": 1}))
        await ws.recv()
        await ws.send(json.dumps({"type": "heartbeat", "timestamp": 1}))
        assert await closed_with(ws) == (4003, "First message must be agent.register")
    ws = await handshake(orch)
    await ws.send(json.dumps({"type": "job.status", "runId": "r"}))
    assert json.loads(await ws.recv()) == {
        "type": "error",
        "code": "INVALID_MESSAGE",
        "message": "Invalid message format",
    }
    assert await closed_with(ws) == (4003, "Invalid message")
    ws = await handshake(orch)
    await ws.send(json.dumps({"type": "no.such.type"}))
    assert (await closed_with(ws))[0] == 4003
    ws = await handshake(orch)
    await ws.send(b"\x00binary")
    assert await closed_with(ws) == (4003, "Invalid message")


async def test_an_invalid_message_is_logged_with_the_paths_of_its_wrong_fields(
    orch: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kici.agents")
    ws = await handshake(orch)
    await ws.send(
        json.dumps(
            {
                "type": "agent.register",
                "messageId": "m2",
                "agentId": "a1",
                "labels": ["x", 7],
                "inFlightJobs": [{"jobId": "j1"}],
            }
        )
    )
    assert await closed_with(ws) == (4003, "Invalid message")
    errors = [getattr(r, "error", "") for r in caplog.records if r.getMessage() == "invalid agent message"]
    assert errors == ["agent.register: invalid labels[1], inFlightJobs[0].runId"]


async def test_too_large_message_and_extended_replies(orch: Harness) -> None:
    ws = await handshake(orch)
    await ws.send(
        json.dumps(
            {
                "type": "cache.upload.request",
                "messageId": "q1",
                "jobId": "j",
                "cacheType": "deps",
                "platform": "linux",
                "arch": "x64",
            }
        )
    )
    assert json.loads(await ws.recv()) == {"type": "cache.upload.response", "requestId": "q1", "uploadUrl": ""}
    await ws.send(json.dumps({"type": "log.chunk", "x": "y" * 4_200_000}))
    assert await closed_with(ws) == (4003, "Message too large")


async def test_duplicate_agent_id_supersedes_the_old_connection(orch: Harness) -> None:
    old = await handshake(orch, "dup")
    new = await handshake(orch, "dup")
    assert await closed_with(old) == (4003, "Superseded by a newer connection for this agentId")
    assert orch.orch is not None and orch.orch.agents is not None
    view = orch.orch.agents.core.agent("dup")
    assert view is not None
    await new.close()


async def test_privileged_root_gate_and_revocation_kick(orch: Harness) -> None:
    async with connect(f"ws://127.0.0.1:{orch.port}/ws") as ws:
        await ws.send(json.dumps({"type": "auth.request", "token": TOKEN, "protocolVersion": 1}))
        await ws.recv()
        await ws.send(
            json.dumps(
                {
                    "type": "agent.register",
                    "messageId": "m",
                    "agentId": "r",
                    "labels": ["kici:privileged:root"],
                    "runningAsUid": 1000,
                }
            )
        )
        code, reason = await closed_with(ws)
        assert code == 4010 and reason.startswith("privileged-root token presented by non-root agent (uid=1000)")
    ws = await handshake(orch, "kicked")
    assert orch.orch is not None and orch.orch.agent_endpoint is not None
    token = next(c.token for c in orch.orch.agent_endpoint.connections if c.agent_id == "kicked")
    assert token is not None
    assert await orch.orch.agent_endpoint.kick_token(token.id) == 1
    assert json.loads(await ws.recv()) == {"type": "auth.failure", "reason": "Token revoked"}
    assert await closed_with(ws) == (4010, "Token revoked")


frames = st.one_of(
    st.text(max_size=200),
    st.dictionaries(
        st.sampled_from(
            ["type", "jobId", "runId", "messageId", "stepIndex", "lines", "state", "agentId", "labels", "timestamp"]
        ),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=20),
            st.lists(st.text(max_size=5)),
            st.sampled_from(
                ["job.status", "log.chunk", "agent.register", "heartbeat", "step.status", "job.ack", "event.emit"]
            ),
        ),
    ).map(json.dumps),
)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=4))
async def test_arbitrary_frames_never_crash_the_server(orch: Harness, batch: list[str]) -> None:
    ws = await handshake(orch, "fuzz")
    try:
        for frame in batch:
            await ws.send(frame)
    except ConnectionClosed:
        pass
    await ws.close()
    assert orch.orch is not None and orch.orch.agent_endpoint is not None
    assert orch.orch.agent_endpoint.crashes == 0
    probe = await handshake(orch, "probe")
    await probe.close()
