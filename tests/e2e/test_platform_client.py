"""The Platform relay client against the reference relay (real uvicorn on loopback), with in-memory stores.

Covers the protocol rules on their own (backoff, reassembly, source diffs, field rules) and the client
end to end: auth, registration, chunked deliveries acked after durable acceptance, rejections, buffered
messages after a dropped link, revoked and wrong keys, and a misbehaving Platform.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from kici_adapters import metrics
from kici_adapters.platform import messages, protocol
from kici_adapters.platform.client import ClientConfig, PlatformClient
from kici_adapters.platform.outbox import MemoryPlatformOutbox
from kici_adapters.platform.protocol import PlatformSource
from kici_core import platform_events
from kici_core.source_records import GenericSource, GitHubSource
from kici_core.testing.fakes import (
    FakeBlobStore,
    FakeClock,
    FakeDeliveryInbox,
    FakeSecretStore,
    FakeSourceStore,
)
from kici_runtime.orchestrator import ingest, platform_link
from kici_runtime.orchestrator.context import AppContext
from kici_runtime.relay.hub import RelaySettings
from kici_runtime.version import VERSION
from tests.support import waits
from tests.support.relay_peer import RunningRelay, running_relay

ORG = "acme"
APP_ID = "123456"
SECRET = "whsec-demo"
BOUND = 15.0
FAST_RELAY = RelaySettings(ack_timeout=3.0, auth_timeout=2.0, revocation_check_interval=0.2)
FAST = {
    "heartbeat_interval": 0.3,
    "ping_interval": 5.0,
    "ping_timeout": 5.0,
    "source_poll_interval": 0.2,
    "outbox_poll_interval": 0.05,
    "trim_interval": 0.1,
    "max_delay_ms": 300.0,
    "register_ack_timeout": 2.0,
}


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, delivery: str, *, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": APP_ID,
        "X-Hub-Signature-256": sign(body, secret),
    }


def _connection_status() -> float | None:
    return metrics.REGISTRY.get_sample_value("kici_platform_connection_status")


# --------------------------------------------------------------------------------------------- pure rules
def test_backoff_follows_the_spec_table() -> None:
    assert protocol.reconnect_delay(0, 0.0) == 1.0
    assert protocol.reconnect_delay(1, 0.0) == 1.5
    assert protocol.reconnect_delay(3, 0.999999) == pytest.approx(5.0625, rel=1e-5)
    assert protocol.reconnect_delay(10, 0.0) == pytest.approx(57.665, rel=1e-4)
    assert protocol.reconnect_delay(11, 0.0) == 60.0
    assert protocol.reconnect_delay(10_000, 0.5) == 60.0


def _start(message_id: str = "m1", total: int = 6, count: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "type": "webhook.relay.start",
        "messageId": message_id,
        "routingKey": "github:1",
        "deliveryId": "d1",
        "event": "push",
        "headers": {"Content-Type": "application/json"},
        "totalSize": total,
        "chunkCount": count,
        **extra,
    }


def _chunk(seq: int, data: bytes, *, final: bool, message_id: str = "m1") -> dict[str, Any]:
    return {
        "type": "webhook.relay.chunk",
        "messageId": message_id,
        "sequence": seq,
        "data": base64.b64encode(data).decode(),
        "final": final,
    }


def test_reassembly_joins_ordered_chunks_and_lowercases_headers() -> None:
    r = protocol.Reassembly()
    assert r.start(_start(), 0.0) is None
    assert r.chunk(_chunk(0, b"abc", final=False), 0.1) is None
    done = r.chunk(_chunk(1, b"def", final=True), 0.2)
    assert isinstance(done, protocol.RelayedDelivery)
    assert done.body == b"abcdef"
    assert done.start.headers == {"content-type": "application/json"}
    assert len(r) == 0


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([_chunk(1, b"def", final=False)], "chunk out of order"),
        ([_chunk(0, b"abc", final=True)], "final chunk before chunkCount chunks"),
        ([_chunk(0, b"abcdefg", final=False)], "relayed body larger than announced"),
        ([{**_chunk(0, b"", final=False), "data": "%%%"}], "chunk data is not valid base64"),
        ([_chunk(0, b"abc", final=False), _chunk(1, b"d", final=True)], "relayed body smaller than announced"),
        ([_chunk(0, b"abc", final=False, message_id="other")], "chunk for an unknown or expired relay stream"),
    ],
)
def test_reassembly_rejects_stream_errors(frames: list[dict[str, Any]], reason: str) -> None:
    r = protocol.Reassembly()
    assert r.start(_start(), 0.0) is None
    results = [r.chunk(f, 0.1) for f in frames]
    last = results[-1]
    assert isinstance(last, protocol.Reject)
    assert last.reason == reason
    assert last.delivery_id == last.message_id  # metadata is gone: the ack echoes the messageId
    assert len(r) == 0 or frames[-1]["messageId"] == "other"


def test_reassembly_refuses_oversize_duplicate_and_expired_streams() -> None:
    r = protocol.Reassembly(ttl=30.0)
    oversize = r.start(_start(total=protocol.WS_MAX_PAYLOAD_BYTES + 1), 0.0)
    assert isinstance(oversize, protocol.Reject) and oversize.delivery_id == "d1"
    assert isinstance(r.start(_start(count=0), 0.0), protocol.Reject)
    assert r.start(_start(), 0.0) is None
    dup = r.start(_start(), 1.0)
    assert isinstance(dup, protocol.Reject) and dup.reason == "duplicate webhook.relay.start"
    late = r.chunk(_chunk(0, b"abc", final=False), 31.0)  # past the 30 s TTL
    assert isinstance(late, protocol.Reject)


def test_source_diff_rules() -> None:
    a = PlatformSource(provider="github", routing_key="github:1", name="a", subtype="github_app")
    b = PlatformSource(provider="generic", routing_key="generic:acme:x", name="x", subtype="generic_webhook")
    b2 = PlatformSource(provider="generic", routing_key="generic:acme:x", name="renamed", subtype="generic_webhook")
    assert protocol.diff_sources([a], [a]).empty
    d = protocol.diff_sources([a, b], [b2])
    assert d.removed == ("github:1",) and d.changed == (b2,) and not d.send_empty_register
    assert protocol.diff_sources([a], []).send_empty_register


def test_forwarded_messages_follow_the_field_rules() -> None:
    out = messages.finish(
        {
            "type": "execution.status",
            "runId": "r",
            "workflowName": "w" * 300,
            "status": "success",
            "sha": None,
            "parentRunId": None,
            "orgId": "acme",
            "startedAt": 1,
        },
        message_id="mid",
        timestamp_ms=42,
    )
    assert out["messageId"] == "mid" and out["timestamp"] == 42
    assert "sha" not in out and out["parentRunId"] is None and "orgId" not in out
    assert out["workflowName"] == "w" * 128
    kept = messages.finish({"type": "log.chunk", "messageId": "keep", "timestamp": 7}, message_id="x", timestamp_ms=1)
    assert kept["messageId"] == "keep" and kept["timestamp"] == 7


def test_dashboard_requests_are_refused() -> None:
    reply = messages.dashboard_unsupported({"type": "dashboard.runs.list", "requestId": "q1"})
    assert reply is not None and reply["type"] == "dashboard.runs.list.response"
    assert reply["code"] == "unsupported_request_type" and reply["requestId"] == "q1"
    assert messages.dashboard_unsupported({"type": "dashboard.runs.list"}) is None


# --------------------------------------------------------------------------------------------- against the relay
@dataclass
class Harness:
    relay: RunningRelay
    ctx: AppContext
    inbox: FakeDeliveryInbox
    sources: FakeSourceStore
    secrets: FakeSecretStore
    outbox: MemoryPlatformOutbox
    client: PlatformClient
    token: str
    woken: list[int]

    async def post_github(self, body: bytes, delivery: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=BOUND) as http:
            return await http.post(
                f"{self.relay.base_url}/webhook/{ORG}/github",
                content=body,
                headers=github_headers(body, delivery, **kw),
            )

    async def messages(self, *types: str, since: int = 0, wait: float = 0) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=BOUND + 5) as http:
            r = await http.get(
                f"{self.relay.base_url}/api/messages",
                params={"type": ",".join(types), "since": since, "wait": wait, "limit": 10_000},
            )
        return list(r.json()["messages"])

    async def wait_messages(self, *types: str, count: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        with waits.within(
            BOUND,
            f"{count} {'/'.join(types)} message(s) recorded by the relay",
            lambda: f"{len(found)} recorded; client {_client_state(self.client)}",
        ):
            while True:
                found = await self.messages(*types)
                if len(found) >= count:
                    return found
                await self.messages(*types, since=found[-1]["seq"] if found else 0, wait=2)

    def connection_id(self) -> str:
        conns = list(self.relay.hub.connections)
        assert len(conns) == 1
        return conns[0]


@asynccontextmanager
async def harness(
    tmp_path: Path, *, orch_secret: str = SECRET, token: str | None = None, **overrides: Any
) -> AsyncIterator[Harness]:
    clock = FakeClock()
    inbox = FakeDeliveryInbox(FakeBlobStore(), clock)
    sources = FakeSourceStore(clock)
    secrets = FakeSecretStore()
    await sources.add_github(GitHubSource(id="src-1", routing_key=f"github:{APP_ID}", name="acme-app", app_id=APP_ID))
    await secrets.put("__system__", "__source__/src-1", "webhookSecret", orch_secret)
    woken: list[int] = []
    ctx = AppContext(
        mode="platform",
        sources=sources,
        secrets=secrets,
        inbox=inbox,
        event_log=inbox,
        clock=clock,
        wake_worker=lambda: woken.append(1),
    )
    outbox = MemoryPlatformOutbox()
    async with running_relay(str(tmp_path / "relay.sqlite3"), FAST_RELAY) as relay:
        relay.store.add_github_source(org=ORG, app_id=APP_ID, webhook_secret=SECRET)
        relay.store.add_generic_source(org=ORG, source_id="deploys", secret="gen-secret")
        _, raw = relay.store.create_key(org=ORG, name="orch")
        config = ClientConfig(url=relay.ws_url, token=token or raw, version=VERSION, **{**FAST, **overrides})

        async def handle(delivery: protocol.RelayedDelivery, org: str | None) -> Any:
            return await ingest.accept_relayed(ctx, delivery, org)

        async def list_sources() -> list[PlatformSource]:
            return await platform_link.platform_sources(sources)

        client = PlatformClient(config, handler=handle, sources=list_sources, outbox=outbox)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.run)
            yield Harness(
                relay=relay,
                ctx=ctx,
                inbox=inbox,
                sources=sources,
                secrets=secrets,
                outbox=outbox,
                client=client,
                token=raw,
                woken=woken,
            )
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_connects_registers_and_accepts_a_relayed_push(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        with _bounded(h, "session 1 of the platform client to authenticate"):
            await h.client.wait_for("authenticated", sessions=1)
        assert _connection_status() == 1
        registered = await h.wait_messages("source.register", count=1)
        first = registered[0]["message"]
        assert [s["routingKey"] for s in first["sources"]] == [f"github:{APP_ID}"]
        assert first["sources"][0] == {
            "provider": "github",
            "routingKey": f"github:{APP_ID}",
            "name": "acme-app",
            "subtype": "github_app",
        }
        assert first["mode"] == "platform"
        await _until_routed(h)

        body = json.dumps({"ref": "refs/heads/main", "after": "9f2c1e7"}).encode()
        resp = await h.post_github(body, "7d1e9a40-0001")
        assert resp.status_code == 200, resp.text
        entry = await h.inbox.get(ORG, "7d1e9a40-0001")
        assert entry is not None and entry.source == "relay" and entry.provider == "github"
        assert h.woken  # the worker was woken after acceptance
        acks = await h.wait_messages("webhook.ack", count=1)
        assert acks[0]["message"]["result"] == "accepted" and not acks[0]["problems"]

        # the same delivery again: accepted, flagged duplicate, nothing new stored
        again = await h.post_github(body, "7d1e9a40-0001")
        assert again.status_code == 200
        acks = await h.wait_messages("webhook.ack", count=2)
        assert acks[1]["message"].get("duplicate") is True
        assert len(h.inbox.entries) == 1

        with _bounded(h, "the platform client: h.client.heartbeats_sent >= 2"):
            await h.client.wait_until(lambda: h.client.heartbeats_sent >= 2)
        # the relay counted them (it reads frames in order; the ack below was sent after them)
        await h.post_github(body, "7d1e9a40-0001")
        assert h.relay.hub.connections[h.connection_id()].heartbeats >= 2


@pytest.mark.anyio
async def test_orchestrator_side_rejections_map_to_http(tmp_path: Path) -> None:
    # the relay verifies with SECRET; the orchestrator holds another secret -> rejected_signature -> 401
    async with harness(tmp_path, orch_secret="a-different-secret") as h:
        with _bounded(h, "session 1 of the platform client to authenticate"):
            await h.client.wait_for("authenticated", sessions=1)
        await h.wait_messages("source.register", count=1)
        await _until_routed(h)
        resp = await h.post_github(b'{"ref":"x"}', "sig-1")
        assert resp.status_code == 401
        ack = (await h.wait_messages("webhook.ack", count=1))[0]["message"]
        assert ack["result"] == "rejected_signature"
        assert "a-different-secret" not in json.dumps(ack) and SECRET not in json.dumps(ack)
        assert h.inbox.entries == {}

        # the source disappears on the orchestrator: it re-registers nothing and answers unknown source
        await h.sources.remove_github(f"github:{APP_ID}")
        deregs = await h.wait_messages("source.deregister", count=1)
        assert deregs[0]["message"]["routingKeys"] == [f"github:{APP_ID}"]


def _bounded(h: Harness, what: str) -> AbstractContextManager[None]:
    """Bound a wait on the platform client: on timeout say ``what`` was awaited and the client's state."""
    return waits.within(BOUND, what, lambda: _client_state(h.client))


def _client_state(client: PlatformClient) -> dict[str, Any]:
    """What a timed-out wait on the platform client reports."""
    return {
        "state": client.state,
        "sessions": client.sessions,
        "attempts": client.attempts,
        "reconnect delays": len(client.delays),
        "accepted keys": sorted(client.accepted_keys),
    }


async def _until_routed(h: Harness, key: str = f"github:{APP_ID}") -> None:
    """The relay applies a registration before it acks it: once the client saw the key accepted, it routes."""
    with _bounded(h, f"the relay to accept routing key {key}"):
        await h.client.wait_until(lambda: key in h.client.accepted_keys)


@pytest.mark.anyio
async def test_buffered_messages_arrive_in_order_after_a_dropped_link(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        with _bounded(h, "session 1 of the platform client to authenticate"):
            await h.client.wait_for("authenticated", sessions=1)
        await h.outbox.publish(platform_events.DeliveryDecided(trace_id="r0", delivery_id="d0", webhook_event="push"))
        await h.wait_messages("execution.event", count=1)
        await h.relay.hub.drop(h.connection_id(), 1001)
        with _bounded(h, "the platform client to see the link drop"):
            await h.client.wait_for("disconnected")
        assert _connection_status() == 0
        for i in range(1, 51):
            await h.outbox.publish(platform_events.LogLines(run_id="r", job_id="j", step_index=0, lines=(f"line {i}",)))
        with _bounded(h, "session 2 of the platform client to authenticate"):
            await h.client.wait_for("authenticated", sessions=2)
        got = await h.wait_messages("log.chunk", count=50)
        assert [m["message"]["lines"][0] for m in got] == [f"line {i}" for i in range(1, 51)]
        assert all(not m["problems"] for m in got)
        assert h.client.delays and h.client.attempts == 0  # a reconnect was scheduled, then reset on auth
        # source.register came before the buffered messages on the new connection
        second_conn = got[0]["connectionId"]
        regs = [m for m in await h.messages("source.register") if m["connectionId"] == second_conn]
        assert regs and regs[0]["seq"] < got[0]["seq"]
        assert await h.outbox.size() == 0


@pytest.mark.anyio
async def test_revoked_and_wrong_keys_keep_retrying_without_crashing(tmp_path: Path) -> None:
    async with harness(tmp_path, token="kici_not-a-real-key") as h:
        with _bounded(h, "the platform client: len(h.client.delays) >= 3"):
            await h.client.wait_until(lambda: len(h.client.delays) >= 3)
        assert h.client.sessions == 0 and h.client.attempts >= 3
        assert _connection_status() == 0

    (tmp_path / "b").mkdir()
    async with harness(tmp_path / "b") as h:
        with _bounded(h, "session 1 of the platform client to authenticate"):
            await h.client.wait_for("authenticated", sessions=1)
        prefix = h.relay.store.list_keys(org=ORG)[0].prefix
        await h.relay.hub.revoke_key(prefix)
        with _bounded(h, "the platform client: len(h.client.delays) >= 2"):
            await h.client.wait_until(lambda: len(h.client.delays) >= 2)
        assert h.client.sessions == 1 and h.client.state != "authenticated"


@pytest.mark.anyio
async def test_misbehaving_platform_frames_are_refused_without_dropping_the_link(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        with _bounded(h, "session 1 of the platform client to authenticate"):
            await h.client.wait_for("authenticated", sessions=1)
        conn = h.connection_id()
        body = b'{"ref":"refs/heads/main"}'
        await h.relay.hub.inject(conn, "this is not json")
        await h.relay.hub.inject(
            conn,
            {
                "type": "webhook.relay",
                "messageId": "legacy",
                "routingKey": "github:1",
                "deliveryId": "legacy-1",
                "event": "push",
                "body": body.decode(),
            },
        )
        await h.relay.hub.inject(conn, _start("oo", total=len(body), count=2, deliveryId="oo-1"))
        await h.relay.hub.inject(conn, _chunk(1, body, final=True, message_id="oo"))
        await h.relay.hub.inject(
            conn, _start("big", total=protocol.WS_MAX_PAYLOAD_BYTES + 1, count=1, deliveryId="big-1")
        )
        await h.relay.hub.inject(conn, {"type": "dashboard.runs.list", "requestId": "q1"})
        acks = await h.wait_messages("webhook.ack", count=2)
        by_msg = {a["message"]["messageId"]: a["message"] for a in acks}
        assert by_msg["oo"]["result"] == "rejected_misconfigured" and by_msg["oo"]["deliveryId"] == "oo"
        assert by_msg["big"]["result"] == "rejected_misconfigured" and by_msg["big"]["deliveryId"] == "big-1"
        assert "legacy" not in by_msg
        replies = await h.wait_messages("dashboard.runs.list.response", count=1)
        assert replies[0]["message"]["code"] == "unsupported_request_type"
        assert h.inbox.entries == {}
        assert h.client.sessions == 1 and h.client.state == "authenticated"
        # the link still carries real deliveries
        await _until_routed(h)
        assert (await h.post_github(body, "after-faults")).status_code == 200


@pytest.mark.anyio
async def test_generic_relay_uses_the_direct_key_shape(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.wait_messages("source.register", count=1)
        src = await h.sources.add_generic(
            GenericSource(id="deploys", org_id=ORG, name="deploys", routing_key=f"generic:{ORG}:deploys")
        )
        await h.secrets.put("__system__", "__webhook__/deploys", "secret", "gen-secret")
        h.client.sources_changed()
        regs = await h.wait_messages("source.register", count=2)
        assert [s["routingKey"] for s in regs[-1]["message"]["sources"]] == [src.routing_key]
        await _until_routed(h, src.routing_key)
        body = b'{"status":"ok"}'
        sig = "sha256=" + hmac.new(b"gen-secret", body, hashlib.sha256).hexdigest()
        async with httpx.AsyncClient(timeout=BOUND) as http:
            r = await http.post(
                f"{h.relay.base_url}/webhook/{ORG}/generic/deploys",
                content=body,
                headers={"Content-Type": "application/json", "X-Signature-256": sig, "X-Delivery-Id": "gd-1"},
            )
        assert r.status_code == 200, r.text
        entry = await h.inbox.get(ORG, f"generic:{ORG}:deploys:gd-1")
        assert entry is not None and entry.source == "relay" and entry.provider == "generic"
