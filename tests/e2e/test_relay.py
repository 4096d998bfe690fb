"""The reference relay end to end: auth and routing patterns (real uvicorn, a raw websockets orchestrator)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_adapters.relay import routing
from kici_adapters.relay.store import RelayStore
from kici_core.errors import NotFound
from kici_runtime.relay.hub import RelaySettings
from tests.support.props import examples
from tests.support.relay_peer import RelayPeer, RunningRelay, running_relay
from tests.support.relay_webhooks import (
    ORG,
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
