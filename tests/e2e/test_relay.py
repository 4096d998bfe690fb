"""The reference relay end to end: real uvicorn on loopback, a raw websockets orchestrator, httpx senders."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_adapters.relay import routing
from kici_adapters.relay.store import RelayStore
from kici_core.errors import NotFound
from kici_runtime.relay import cli
from kici_runtime.relay.hub import Delivery, RelaySettings, relay_frames
from tests.support import waits
from tests.support.props import examples
from tests.support.relay_peer import RelayPeer, RunningRelay, running_relay

pytestmark = pytest.mark.anyio

ORG = "acme"
APP_ID = "123456"
SECRET = "whsec-demo"
FAST = RelaySettings(ack_timeout=1.0, auth_timeout=1.0, revocation_check_interval=0.2)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, *, delivery: str = "d-1", event: str = "push", app_id: str = APP_ID) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": app_id,
        "X-Hub-Signature-256": sign(body),
    }


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with running_relay(str(tmp_path / "relay.sqlite3"), FAST) as running:
        running.store.add_github_source(org=ORG, app_id=APP_ID, webhook_secret=SECRET)
        running.store.add_generic_source(org=ORG, source_id="deploys", secret="gen-secret")
        yield running


@asynccontextmanager
async def connected_peer(
    relay: RunningRelay, *routing_keys: str, patterns: tuple[str, ...] = ()
) -> AsyncIterator[RelayPeer]:
    """An authenticated peer with a fresh key of ORG that registered ``routing_keys``."""
    _, token = relay.store.create_key(org=ORG, name="orch", patterns=patterns)
    async with RelayPeer.connect(relay.ws_url) as peer:
        assert (await peer.auth(token))["type"] == "auth.success"
        if routing_keys:
            ack = await peer.register(*routing_keys)
            assert [a["routingKey"] for a in ack["accepted"]] == list(routing_keys)
        yield peer


async def post_while(
    relay: RunningRelay, url: str, body: bytes, headers: dict[str, str], peer_side: Any
) -> tuple[httpx.Response, Any]:
    """POST a webhook while ``peer_side()`` plays the orchestrator; return the response and its result."""
    results: dict[str, Any] = {}

    async def sender() -> None:
        async with httpx.AsyncClient(base_url=relay.base_url, timeout=30) as client:
            results["response"] = await client.post(url, content=body, headers=headers)

    with waits.within(
        20,
        f"the relay to answer POST {url} and the orchestrator peer to see it",
        lambda: {k: v for k, v in results.items()},
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            results["peer"] = await peer_side()
    return results["response"], results["peer"]


# --- auth --------------------------------------------------------------------------------------------


async def test_valid_key_is_authenticated_and_recorded_as_used(relay: RunningRelay) -> None:
    api_key, token = relay.store.create_key(org=ORG, name="prod-orchestrator")
    assert api_key.prefix == token[:16] and token.startswith("kici_")
    async with RelayPeer.connect(relay.ws_url) as peer:
        success = await peer.auth(token)
        assert success["type"] == "auth.success"
        assert success["orgId"] == ORG
        assert success["provenanceIssuer"] is None
        assert success["orgPublicAlias"].startswith("oal_")
        ack = await peer.register()
        assert ack["accepted"] == [] and ack["rejected"] == []
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            health = (await client.get("/health")).json()
            conns = (await client.get("/api/connections")).json()["connections"]
        assert health == {"status": "ok", "connections": 1}
        assert conns[0]["connectionId"] == success["connectionId"]
        assert conns[0]["keyPrefix"] == api_key.prefix
    used = relay.store.get_key(api_key.id)
    assert used is not None and used.last_used_at is not None


@pytest.mark.parametrize("token", ["kici_0000000000000000000000000000dead", ""])
async def test_wrong_key_gets_auth_failure_and_close_4001(relay: RunningRelay, token: str) -> None:
    async with RelayPeer.connect(relay.ws_url) as peer:
        failure = await peer.auth(token)
        assert failure["type"] == "auth.failure"
        assert token not in failure["reason"] or not token
        assert await peer.wait_closed() == 4001


async def test_revoked_key_is_refused(relay: RunningRelay) -> None:
    api_key, token = relay.store.create_key(org=ORG, name="old")
    relay.store.revoke_key(api_key.prefix)
    async with RelayPeer.connect(relay.ws_url) as peer:
        assert (await peer.auth(token))["type"] == "auth.failure"
        assert await peer.wait_closed() == 4001


async def test_unsupported_protocol_version_is_refused(relay: RunningRelay) -> None:
    _, token = relay.store.create_key(org=ORG, name="orch")
    async with RelayPeer.connect(relay.ws_url) as peer:
        failure = await peer.auth(token, protocol_version=0)
        assert failure["type"] == "auth.failure" and "protocolVersion" in failure["reason"]
        assert await peer.wait_closed() == 4001


async def test_first_frame_must_be_auth_request(relay: RunningRelay) -> None:
    async with RelayPeer.connect(relay.ws_url) as peer:
        await peer.send({"type": "heartbeat", "timestamp": 1})
        assert await peer.wait_closed() == 4002


async def test_silent_socket_is_closed_4002_after_auth_timeout(relay: RunningRelay) -> None:
    async with RelayPeer.connect(relay.ws_url) as peer:
        assert await peer.wait_closed() == 4002


async def test_revoking_a_key_closes_its_live_socket(relay: RunningRelay) -> None:
    api_key, token = relay.store.create_key(org=ORG, name="orch")
    async with RelayPeer.connect(relay.ws_url) as peer:
        assert (await peer.auth(token))["type"] == "auth.success"
        await relay.hub.revoke_key(api_key.prefix)
        assert await peer.wait_closed() == 4001
    async with RelayPeer.connect(relay.ws_url) as again:
        assert (await again.auth(token))["type"] == "auth.failure"


async def test_revocation_from_another_process_is_swept(relay: RunningRelay, tmp_path: Path) -> None:
    api_key, token = relay.store.create_key(org=ORG, name="orch")
    async with RelayPeer.connect(relay.ws_url) as peer:
        assert (await peer.auth(token))["type"] == "auth.success"
        # Same file, separate connection: what `kici-relay key revoke` does while the relay runs.
        other = RelayStore(relay.store.path)
        other.revoke_key(api_key.prefix)
        other.close()
        assert await peer.wait_closed() == 4001


async def test_missing_heartbeats_close_4004(tmp_path: Path) -> None:
    quick = RelaySettings(heartbeat_timeout=0.5, auth_timeout=1.0)
    async with running_relay(str(tmp_path / "hb.sqlite3"), quick) as relay:
        _, token = relay.store.create_key(org=ORG, name="orch")
        async with RelayPeer.connect(relay.ws_url) as peer:
            assert (await peer.auth(token))["type"] == "auth.success"
            await peer.send({"type": "heartbeat", "timestamp": 1767225600000})
            assert await peer.wait_closed() == 4004


async def test_fault_injection_reaches_the_orchestrator(relay: RunningRelay) -> None:
    async with connected_peer(relay) as peer:
        (conn,) = relay.hub.connections.values()
        await relay.hub.inject(conn.connection_id, "not json at all")
        await relay.hub.inject(conn.connection_id, {"type": "webhook.relay", "payload": {}})
        assert await peer.ws.recv() == "not json at all"
        assert (await peer.recv())["type"] == "webhook.relay"
        await relay.hub.drop(conn.connection_id)
        assert await peer.wait_closed() == 1001
    with pytest.raises(NotFound):
        await relay.hub.drop(conn.connection_id)


# --- routing patterns ------------------------------------------------------------------------------


async def test_routing_patterns_decide_which_keys_are_accepted(relay: RunningRelay) -> None:
    relay.store.add_github_source(org="other-org", app_id="777", webhook_secret="x")
    _, token = relay.store.create_key(org=ORG, name="orch", patterns=("github:123456", "generic:*"))
    async with RelayPeer.connect(relay.ws_url) as peer:
        await peer.auth(token)
        ack = await peer.register("github:123456", "github:999", "generic:acme:deploys", "generic:evil:x", "github:777")
    accepted = {a["routingKey"]: a["webhookUrl"] for a in ack["accepted"]}
    rejected = {r["routingKey"]: r["reason"] for r in ack["rejected"]}
    assert accepted == {
        "github:123456": f"{relay.base_url}/webhook/acme/github",
        "generic:acme:deploys": f"{relay.base_url}/webhook/acme/generic/deploys",
    }
    assert set(rejected) == {"github:999", "generic:evil:x", "github:777"}
    assert "routing patterns" in rejected["github:999"]
    assert "another organization" in rejected["generic:evil:x"]


async def test_key_without_patterns_gets_every_source_and_deregister_removes(relay: RunningRelay) -> None:
    async with connected_peer(relay, "github:123456", "github:42") as peer:
        await peer.send({"type": "source.deregister", "messageId": "m-1", "routingKeys": ["github:123456", "nope"]})
        ack = await peer.recv_type("source.deregister.ack")
        assert ack == {"type": "source.deregister.ack", "messageId": "m-1", "removed": ["github:123456"]}
        body = b"{}"
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            resp = await client.post(f"/webhook/{ORG}/github", content=body, headers=github_headers(body))
        assert resp.status_code == 503


async def test_delivery_goes_only_to_a_connection_allowed_for_the_key(relay: RunningRelay) -> None:
    _, denied_token = relay.store.create_key(org=ORG, name="generic-only", patterns=("generic:*",))
    async with (
        RelayPeer.connect(relay.ws_url) as denied,
        connected_peer(relay, "github:123456") as allowed,
    ):
        await denied.auth(denied_token)
        ack = await denied.register("github:123456")
        assert ack["accepted"] == [] and ack["rejected"][0]["routingKey"] == "github:123456"
        body = b'{"ref":"refs/heads/main"}'

        async def orchestrator() -> str:
            delivery = await allowed.receive_delivery()
            await allowed.ack(delivery)
            return str(delivery.start["deliveryId"])

        resp, got = await post_while(relay, f"/webhook/{ORG}/github", body, github_headers(body), orchestrator)
        assert resp.status_code == 200 and got == "d-1"
        assert [c.key.name for c in relay.hub.candidates(ORG, "github:123456")] == ["orch"]


@given(st.sampled_from(["github", "generic", "gitlab"]), st.text("abc:123", min_size=1, max_size=8))
@settings(max_examples=examples(150), deadline=None)
def test_pattern_semantics(provider: str, ident: str) -> None:
    key = f"{provider}:{ident}"
    assert routing.pattern_matches(key, key)
    assert routing.pattern_matches(f"{provider}:*", key)
    assert routing.key_allowed((), key)
    assert not routing.pattern_matches("bitbucket:*", key)
    assert routing.key_allowed(("bitbucket:1", f"{provider}:*"), key)


def test_malformed_patterns_are_refused(tmp_path: Path) -> None:
    store = RelayStore(str(tmp_path / "p.sqlite3"))
    for bad in ("github", ":1", "github:", "git hub:1"):
        with pytest.raises(Exception, match="provider:id"):
            store.create_key(org=ORG, name="n", patterns=(bad,))


# --- chunked relay ---------------------------------------------------------------------------------


async def test_signed_github_webhook_is_relayed_chunked_and_reassembles(relay: RunningRelay) -> None:
    payload = {"action": "opened", "blob": "x" * 150_000, "unicode": "héllo ✓"}
    body = json.dumps(payload).encode()
    headers = github_headers(body, delivery="7d1e9a40", event="pull_request")
    async with connected_peer(relay, "github:123456") as peer:

        async def orchestrator() -> Any:
            delivery = await peer.receive_delivery()
            await peer.ack(delivery)
            return delivery

        resp, delivery = await post_while(relay, f"/webhook/{ORG}/github", body, headers, orchestrator)
    assert resp.status_code == 200
    assert resp.json() == {"accepted": True, "deliveryId": "7d1e9a40"}
    start = delivery.start
    assert start["routingKey"] == "github:123456"
    assert start["deliveryId"] == "7d1e9a40"
    assert start["event"] == "pull_request"
    assert start["action"] == "opened"
    assert start["signatureHeaderName"] == "x-hub-signature-256"
    assert start["signatureHeader"] == sign(body)
    assert start["clientIp"] == "127.0.0.1"
    assert start["headers"]["content-type"] == "application/json"
    assert start["headers"]["x-hub-signature-256"] == sign(body)
    assert start["headers"]["x-github-event"] == "pull_request"
    assert all(name == name.lower() for name in start["headers"])
    assert start["totalSize"] == len(body)
    assert start["chunkCount"] == 3 == len(delivery.chunks)
    assert delivery.body == body
    assert all(len(base64.b64decode(c["data"])) == 65536 for c in delivery.chunks[:-1])
    assert "requestId" in start


async def test_empty_body_is_one_empty_final_chunk(relay: RunningRelay) -> None:
    body = b""
    async with connected_peer(relay, "github:123456") as peer:

        async def orchestrator() -> Any:
            delivery = await peer.receive_delivery()
            await peer.ack(delivery)
            return delivery

        resp, delivery = await post_while(relay, f"/webhook/{ORG}/github", body, github_headers(body), orchestrator)
    assert resp.status_code == 200
    assert delivery.start["totalSize"] == 0 and delivery.start["chunkCount"] == 1
    assert delivery.chunks == [
        {
            "type": "webhook.relay.chunk",
            "messageId": delivery.message_id,
            "sequence": 0,
            "data": "",
            "final": True,
        }
    ]


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=700))
@settings(max_examples=examples(150), deadline=None)
def test_relay_frames_split_and_reassemble(body: bytes, chunk_size: int) -> None:
    delivery = Delivery(
        org=ORG, routing_key="github:1", delivery_id="d", event="push", action=None, signature_header_name=None,
        signature_header=None, client_ip=None, headers={"content-type": "application/json"}, body=body,
    )  # fmt: skip
    start, *chunks = relay_frames(delivery, message_id="m", chunk_size=chunk_size)
    assert start["chunkCount"] == len(chunks) == max(1, -(-len(body) // chunk_size))
    assert start["totalSize"] == len(body)
    assert "signatureHeader" not in start and start["action"] is None
    assert b"".join(base64.b64decode(str(c["data"])) for c in chunks) == body
    assert [c["sequence"] for c in chunks] == list(range(len(chunks)))
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]


@pytest.mark.parametrize(
    ("result", "status"),
    [
        ("accepted", 200),
        (None, 200),
        ("rejected_signature", 401),
        ("rejected_unknown_source", 404),
        ("rejected_misconfigured", 500),
    ],
)
async def test_ack_result_maps_to_http_status(relay: RunningRelay, result: str | None, status: int) -> None:
    body = b'{"zen":"hi"}'
    async with connected_peer(relay, "github:123456") as peer:

        async def orchestrator() -> None:
            delivery = await peer.receive_delivery()
            await peer.ack(delivery, result=result, reason="diagnostic text" if result else None)

        resp, _ = await post_while(relay, f"/webhook/{ORG}/github", body, github_headers(body), orchestrator)
        assert resp.status_code == status
        if status != 200:
            assert resp.json() == {"rejected": True, "result": result, "reason": "diagnostic text"}
        if result == "rejected_unknown_source":
            # Negative cache: the next delivery is answered 404 by the relay itself, nothing is relayed.
            async with httpx.AsyncClient(base_url=relay.base_url) as client:
                again = await client.post(f"/webhook/{ORG}/github", content=body, headers=github_headers(body))
            assert again.status_code == 404
            assert again.json() == {"rejected": True, "reason": "Unknown organization"}
            assert relay.hub.candidates(ORG, "github:123456")[0].inflight == 0


async def test_no_ack_within_timeout_is_503_with_retry_after(relay: RunningRelay) -> None:
    body = b"{}"
    async with connected_peer(relay, "github:123456") as peer:
        resp, delivery = await post_while(
            relay, f"/webhook/{ORG}/github", body, github_headers(body), peer.receive_delivery
        )
        # A late ack for the abandoned messageId is ignored.
        await peer.ack(delivery)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    assert resp.json() == {"error": "No orchestrator available"}


async def test_no_connected_orchestrator_is_503(relay: RunningRelay) -> None:
    body = b"{}"
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        resp = await client.post(f"/webhook/{ORG}/github", content=body, headers=github_headers(body))
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5"


async def test_missed_ack_fails_over_to_the_next_orchestrator(relay: RunningRelay) -> None:
    body = b'{"n":1}'
    async with (
        connected_peer(relay, "github:123456") as first,
        connected_peer(relay, "github:123456") as second,
    ):

        async def orchestrators() -> tuple[Any, Any]:
            ignored = await first.receive_delivery()
            answered = await second.receive_delivery()
            await second.ack(answered)
            return ignored, answered

        resp, (ignored, answered) = await post_while(
            relay, f"/webhook/{ORG}/github", body, github_headers(body), orchestrators
        )
    assert resp.status_code == 200
    assert ignored.start["deliveryId"] == answered.start["deliveryId"] == "d-1"
    assert ignored.message_id != answered.message_id


async def test_bad_signature_is_rejected_at_the_relay_without_relaying(relay: RunningRelay) -> None:
    body = b'{"evil":true}'
    forged = github_headers(body) | {
        "X-Hub-Signature-256": sign(body, "wrong"),
        "X-GitHub-Delivery": "forged",
    }
    async with connected_peer(relay, "github:123456") as peer:
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            resp = await client.post(f"/webhook/{ORG}/github", content=body, headers=forged)
            missing = {k: v for k, v in forged.items() if k != "X-Hub-Signature-256"}
            resp2 = await client.post(f"/webhook/{ORG}/github", content=body, headers=missing)
        assert resp.status_code == resp2.status_code == 401
        assert resp.json() == {"rejected": True, "reason": "Invalid signature"}

        async def orchestrator() -> Any:
            delivery = await peer.receive_delivery()
            await peer.ack(delivery)
            return delivery

        good, delivery = await post_while(relay, f"/webhook/{ORG}/github", body, github_headers(body), orchestrator)
    # The first relayed frame the orchestrator ever saw is the good delivery's.
    assert good.status_code == 200 and delivery.start["deliveryId"] == "d-1"
    assert [f["type"] for f in peer.received][:3] == [
        "auth.success",
        "source.register.ack",
        "webhook.relay.start",
    ]


@pytest.mark.parametrize(
    ("url", "change", "status"),
    [
        (f"/webhook/{ORG}/github", {"X-GitHub-Hook-Installation-Target-ID": "999"}, 404),
        ("/webhook/someone-else/github", {}, 404),
        (f"/webhook/{ORG}/github", {"X-GitHub-Hook-Installation-Target-Type": "repository"}, 400),
        (f"/webhook/{ORG}/github", {"X-GitHub-Delivery": ""}, 400),
        (f"/webhook/{ORG}/generic/unknown", {}, 404),
    ],
)
async def test_unroutable_webhooks_are_refused(
    relay: RunningRelay, url: str, change: dict[str, str], status: int
) -> None:
    body = b"{}"
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        resp = await client.post(url, content=body, headers=github_headers(body) | change)
    assert resp.status_code == status
    assert resp.json()["rejected"] is True


async def test_generic_webhook_is_verified_and_relayed(relay: RunningRelay) -> None:
    body = b'{"deploy":"prod"}'
    headers = {
        "Content-Type": "application/json",
        "X-Signature-256": sign(body, "gen-secret"),
        "X-Event-Type": "deploy.finished",
        "X-Delivery-Id": "gen-7",
    }
    async with connected_peer(relay, "generic:acme:deploys") as peer:
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            bad = await client.post(
                f"/webhook/{ORG}/generic/deploys", content=body, headers=headers | {"X-Signature-256": "00"}
            )
        assert bad.status_code == 401

        async def orchestrator() -> Any:
            delivery = await peer.receive_delivery()
            await peer.ack(delivery)
            return delivery

        resp, delivery = await post_while(relay, f"/webhook/{ORG}/generic/deploys", body, headers, orchestrator)
    assert resp.status_code == 200 and resp.json()["deliveryId"] == "gen-7"
    start = delivery.start
    assert start["routingKey"] == "generic:acme:deploys"
    assert start["event"] == "deploy.finished" and start["action"] is None
    assert start["deliveryId"] == "gen-7"
    assert start["signatureHeaderName"] == "x-signature-256"
    assert start["headers"]["x-signature-256"] == sign(body, "gen-secret")
    assert start["headers"]["content-type"] == "application/json"
    assert delivery.body == body


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
