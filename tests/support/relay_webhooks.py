"""Helpers for the relay end-to-end tests: the demo org and sources, signed GitHub headers, connected peers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from kici_runtime.relay.hub import RelaySettings
from tests.support import waits
from tests.support.relay_peer import RelayPeer, RunningRelay, running_relay

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


@asynccontextmanager
async def demo_relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    """A relay with ORG's GitHub App source (APP_ID, SECRET) and a generic source ``deploys``."""
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
