"""The reference relay end to end: webhooks relayed in chunks, acks, failover and signature checks."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_runtime.relay.hub import Delivery, relay_frames
from tests.support.props import examples
from tests.support.relay_peer import RunningRelay
from tests.support.relay_webhooks import (
    ORG,
    connected_peer,
    demo_relay,
    github_headers,
    post_while,
    sign,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with demo_relay(tmp_path) as running:
        yield running


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
