"""The reference relay end to end: recorded messages, the kici-relay CLI, HTTP edges and permessage-deflate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from kici_adapters.relay.store import RelayStore
from kici_runtime.relay import cli
from tests.support import waits
from tests.support.relay_peer import RunningRelay, running_relay
from tests.support.relay_webhooks import (
    APP_ID,
    FAST,
    ORG,
    SECRET,
    connected_peer,
    demo_relay,
    github_headers,
    post_while,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with demo_relay(tmp_path) as running:
        yield running


# --- recorded messages ----------------------------------------------------------------------------


async def test_forwarded_messages_are_recorded_and_listed(relay: RunningRelay) -> None:
    status = {
        "type": "execution.status", "messageId": "m1", "runId": "r1", "workflowName": "ci", "status": "success",
        "startedAt": 1767225601000, "completedAt": 1767225689500, "timestamp": 1767225689510,
    }  # fmt: skip
    log_chunk = {
        "type": "log.chunk", "messageId": "m2", "runId": "r1", "jobId": "j1", "stepIndex": 0,
        "lines": ["hello"], "timestamp": 1767225689511,
    }  # fmt: skip
    broken = dict(status, messageId="m3", sha=None, status="exploded")
    async with connected_peer(relay) as peer:
        async with httpx.AsyncClient(base_url=relay.base_url, timeout=30) as client:
            for frame in (status, log_chunk, broken, {"type": "mystery.thing"}):
                await peer.send(frame)
            got = (await client.get("/api/messages", params={"type": "execution.status", "wait": 10})).json()
            while len(got["messages"]) < 2:
                more = await client.get(
                    "/api/messages", params={"type": "execution.status", "since": got["lastSeq"], "wait": 10}
                )
                got["messages"] += more.json()["messages"]
                got["lastSeq"] = more.json()["lastSeq"]
            everything = (
                await client.get("/api/messages", params={"since": 0, "type": "log.chunk,mystery.thing", "wait": 10})
            ).json()
            later = await client.get("/api/messages", params={"since": got["lastSeq"], "type": "execution.status"})
    first, second = got["messages"]
    assert first["message"] == status and first["problems"] == [] and first["orgId"] == ORG
    assert second["message"]["messageId"] == "m3"
    assert any(p.startswith("sha: null") for p in second["problems"])
    assert any(p.startswith("status:") for p in second["problems"])
    assert first["seq"] < second["seq"]
    assert later.json()["messages"] == []
    types = [m["type"] for m in everything["messages"]]
    assert types[0] == "log.chunk"
    # Durable: the same rows are in the SQLite file.
    stored = relay.store.list_messages(types=("execution.status",))
    assert [m.body for m in stored] == [status, broken]
    assert relay.hub.recorded[-1].type in {"mystery.thing", "log.chunk", "execution.status"}


async def test_auth_request_is_never_recorded(relay: RunningRelay) -> None:
    async with connected_peer(relay, "github:123456"):
        pass
    recorded = relay.store.list_messages()
    assert [m.type for m in recorded] == ["source.register"]


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_manages_keys_and_sources(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.sqlite3")
    runner = CliRunner()
    created = runner.invoke(
        cli.cli, ["key", "create", "--org", ORG, "--name", "prod", "--route", "github:1", "--db", db]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("kici_")
    listing = runner.invoke(cli.cli, ["key", "list"], env={"KICI_RELAY_DB": db})
    assert token[:16] in listing.output and token not in listing.output and "github:1" in listing.output
    assert RelayStore(db).authenticate(token) is not None
    revoked = runner.invoke(cli.cli, ["key", "revoke", token[:16], "--db", db])
    assert revoked.exit_code == 0 and RelayStore(db).authenticate(token) is None
    added = runner.invoke(
        cli.cli,
        [
            "source",
            "add",
            "github",
            "--org",
            ORG,
            "--app-id",
            "55",
            "--webhook-secret",
            "s3cr3t-value",
            "--db",
            db,
        ],
    )
    assert added.exit_code == 0 and "github:55" in added.output
    generic = runner.invoke(
        cli.cli,
        ["source", "add", "generic", "--org", ORG, "--source-id", "ci", "--secret", "abcd1234", "--db", db],
    )
    assert generic.exit_code == 0 and "generic:acme:ci" in generic.output
    sources = runner.invoke(cli.cli, ["source", "list", "--db", db])
    assert "github:55" in sources.output and "s3cr3t-value" not in sources.output


def test_cli_errors_exit_with_the_error_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["key", "revoke", "kici_nothing", "--db", str(tmp_path / "e.sqlite3")])
    assert exited.value.code == 66
    assert "Error: no live API key" in capsys.readouterr().err


# --- HTTP edges and the WebSocket extension ------------------------------------------------------------------


async def test_webhook_routes_answer_wrong_methods_unknown_paths_and_oversize_declarations(
    relay: RunningRelay,
) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        wrong = await client.get(f"/webhook/{ORG}/github")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert (await client.post(f"/webhook/{ORG}/gitlab", content=b"{}")).status_code == 404
        assert (await client.post(f"/webhook/{ORG}/generic/", content=b"{}")).status_code == 404
    # a declared length over the 25 MiB frame cap is refused before a byte of the body is read
    host, port = relay.base_url.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    async with stream:
        await stream.send(
            f"POST /webhook/{ORG}/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {26_214_401}\r\n\r\n".encode()
        )
        with waits.within(10, "the relay's answer to an oversized Content-Length"):
            answer = await stream.receive()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b"Payload Too Large")


@pytest.mark.parametrize("compression", [False, True])
async def test_permessage_deflate_is_accepted_only_when_asked_and_relaying_works_either_way(
    tmp_path: Path, compression: bool
) -> None:
    async with running_relay(str(tmp_path / "relay.sqlite3"), FAST, compression=compression) as relay:
        relay.store.add_github_source(org=ORG, app_id=APP_ID, webhook_secret=SECRET)
        body = json.dumps({"zen": "Design for failure.", "pad": "y" * 2000}).encode()
        async with connected_peer(relay, f"github:{APP_ID}") as peer:
            response = peer.ws.response
            assert response is not None
            negotiated = response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in negotiated) is compression

            async def orchestrator() -> Any:
                delivery = await peer.receive_delivery()
                await peer.ack(delivery)
                return delivery

            resp, delivery = await post_while(
                relay, f"/webhook/{ORG}/github", body, github_headers(body, delivery="dfl-1"), orchestrator
            )
        assert resp.status_code == 200 and delivery.body == body
        acks = await relay.hub.wait_messages(since=0, types=("webhook.ack",), wait=5)
        assert [m.body["deliveryId"] for m in acks] == ["dfl-1"]
