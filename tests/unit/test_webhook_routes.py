"""Direct webhook routes over fakes (no sockets): status codes and bodies of every branch."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from kici_core.source_records import GenericSource, GitHubSource
from kici_core.testing import fakes
from kici_runtime.orchestrator.app import build_app
from kici_runtime.orchestrator.context import AppContext

pytestmark = pytest.mark.anyio


class Env:
    def __init__(self, mode: str = "independent", base_path: str = "", *, local_sources: bool = False) -> None:
        self.clock = fakes.FakeClock()
        self.blobs = fakes.FakeBlobStore()
        self.inbox = fakes.FakeDeliveryInbox(self.blobs, self.clock)
        self.sources = fakes.FakeSourceStore(self.clock)
        self.secrets = fakes.FakeSecretStore()
        self.woken = 0
        self.ctx = AppContext(
            mode=mode,
            sources=self.sources,
            secrets=self.secrets,
            inbox=self.inbox,
            event_log=self.inbox,
            base_path=base_path,
            wake_worker=self._wake,
            local_sources_enabled=local_sources,
        )
        self.app = build_app(self.ctx)

    def _wake(self) -> None:
        self.woken += 1

    async def add_github(self, secret: str = "ghsecret") -> GitHubSource:
        src = await self.sources.add_github(
            GitHubSource(id="src-1", routing_key="github:42", name="app", app_id="42", customer_id="acme")
        )
        await self.secrets.put("__system__", "__source__/src-1", "webhookSecret", secret)
        return src

    async def add_generic(self, **kw: object) -> GenericSource:
        fields: dict[str, object] = {
            "id": "0f0e0d0c-0000-4000-8000-000000000001",
            "org_id": "acme",
            "name": "ci",
            "routing_key": "generic:acme:0f0e0d0c-0000-4000-8000-000000000001",
        }
        fields.update(kw)
        src = await self.sources.add_generic(GenericSource(**fields))  # type: ignore[arg-type]
        await self.secrets.put("__system__", f"__webhook__/{src.id}", "secret", "gensecret")
        return src


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    yield Env()


def client(e: Env) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=e.app), base_url="http://test")


def gh_headers(body: bytes, secret: str = "ghsecret", delivery: str = "d-1", event: str = "push") -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-github-event": event,
        "x-github-delivery": delivery,
        "x-github-hook-installation-target-type": "integration",
        "x-github-hook-installation-target-id": "42",
        "x-hub-signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


async def test_github_accepts_signed_delivery_durably_and_dedups(env: Env) -> None:
    await env.add_github()
    body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}}).encode()
    async with client(env) as c:
        r = await c.post("/webhook/acme/github", content=body, headers=gh_headers(body))
        assert r.status_code == 202 and r.json() == {"accepted": True, "deliveryId": "d-1"}
        entry = await env.inbox.get("acme", "d-1")
        assert entry is not None and entry.status == "received" and entry.source == "direct"
        assert await env.inbox.depth() == 1 and env.woken == 1
        r2 = await c.post("/webhook/acme/github", content=body, headers=gh_headers(body))
        assert r2.status_code == 200 and r2.json()["duplicate"] is True
        assert await env.inbox.depth() == 1


async def test_github_rejections(env: Env) -> None:
    await env.add_github()
    body = b'{"a":1}'
    async with client(env) as c:
        h = gh_headers(body)
        h.pop("x-github-hook-installation-target-id")
        assert (await c.post("/webhook/acme/github", content=body, headers=h)).status_code == 400
        h = gh_headers(body)
        h.pop("x-github-delivery")
        r = await c.post("/webhook/acme/github", content=body, headers=h)
        assert r.status_code == 400 and r.json()["reason"] == "Missing GitHub event headers"
        r = await c.post("/webhook/other/github", content=body, headers=gh_headers(body))
        assert r.status_code == 404 and r.json() == {"rejected": True, "reason": "Unknown organization"}
        r = await c.post("/webhook/acme/github", content=body, headers=gh_headers(body, secret="wrong"))
        assert r.status_code == 401 and r.json() == {"rejected": True, "reason": "Invalid signature"}
        bad = b"not json"
        r = await c.post("/webhook/acme/github", content=bad, headers=gh_headers(bad))
        assert r.status_code == 400 and r.json()["reason"] == "Invalid payload"
        r = await c.post("/webhook/acme/github", content=b"x" * (env.ctx.max_body_bytes + 1), headers=gh_headers(b""))
        assert r.status_code == 413 and r.text == "Payload Too Large"
    assert await env.inbox.depth() == 0


async def test_github_ping_and_form_body(env: Env) -> None:
    await env.add_github()
    form = b"payload=%7B%22zen%22%3A%22hi%22%7D"
    h = gh_headers(form, event="ping", delivery="p-1")
    h["content-type"] = "application/x-www-form-urlencoded"
    async with client(env) as c:
        r = await c.post("/webhook/acme/github", content=form, headers=h)
    assert r.status_code == 200 and r.json() == {"accepted": True, "deliveryId": "p-1", "event": "ping"}
    item = (await env.inbox.claim(worker_id="w", limit=1, lease_seconds=5))[0]
    assert json.loads(await env.inbox.payload(item)) == {"zen": "hi"}


async def test_platform_mode_refuses_direct_routes() -> None:
    e = Env(mode="platform")
    async with client(e) as c:
        for path in ("/webhook/acme/github", "/webhook/acme/generic/ci"):
            r = await c.post(path, content=b"{}")
            assert r.status_code == 403 and r.json()["mode"] == "platform"


async def test_generic_hmac_flow(env: Env) -> None:
    src = await env.add_generic()
    body = b'{"hello":"world"}'
    sig = hmac.new(b"gensecret", body, hashlib.sha256).hexdigest()
    async with client(env) as c:
        r = await c.post(
            "/webhook/acme/generic/ci",
            content=body,
            headers={"x-signature-256": "sha256=" + sig, "x-delivery-id": "abc", "x-event-type": "build"},
        )
        assert r.status_code == 202
        assert r.json() == {"accepted": True, "deliveryId": f"{src.routing_key}:abc"}
        r = await c.post(
            "/webhook/acme/generic/ci", content=body, headers={"x-signature-256": sig, "x-delivery-id": "abc"}
        )
        assert r.status_code == 200 and r.json()["duplicate"] is True
        r = await c.post("/webhook/acme/generic/ci", content=body, headers={"x-signature-256": "00" * 32})
        assert r.status_code == 401
        r = await c.post("/webhook/acme/generic/nope", content=body)
        assert r.status_code == 404 and r.json() == {"rejected": True, "reason": "Unknown source"}
        r = await c.post(
            f"/webhook/acme/generic/{src.id}", content=body, headers={"x-signature-256": sig, "x-delivery-id": "by-id"}
        )
        assert r.status_code == 202


async def test_generic_limits_filter_and_local_rules(env: Env) -> None:
    await env.add_generic(
        max_payload_bytes=10, verification_method="none", rate_limit_rpm=1, allowed_events=("deploy",)
    )
    async with client(env) as c:
        r = await c.post("/webhook/acme/generic/ci", content=b"x" * 11)
        assert r.status_code == 413 and r.json()["maxBytes"] == 10
        r = await c.post("/webhook/acme/generic/ci", content=b"{}", headers={"x-event-type": "build"})
        assert r.status_code == 200 and r.json()["status"] == "filtered"
        r = await c.post("/webhook/acme/generic/ci", content=b"{}", headers={"x-event-type": "deploy"})
        assert r.status_code == 429 and r.headers["retry-after"].isdigit()
    off = Env()
    await off.add_generic(name="dev", provider_type="local", verification_method="none")
    async with client(off) as c:  # local sources are refused unless KICI_DEV or KICI_ALLOW_LOCAL_SOURCES
        r = await c.post("/webhook/acme/generic/dev", content=b"{}", headers={"x-event-type": "push"})
        assert r.status_code == 404 and r.json()["reason"] == "Unknown source"
    e2 = Env(local_sources=True)
    await e2.add_generic(name="dev", provider_type="local", verification_method="none")
    async with client(e2) as c:
        assert (await c.post("/webhook/acme/generic/dev", content=b"nope", headers={"x-event-type": "push"})).json()[
            "reason"
        ] == "Local source requires JSON body"
        r = await c.post("/webhook/acme/generic/dev", content=b"{}")
        assert r.status_code == 400 and "x-event-type" in r.json()["reason"]
        r = await c.post(
            "/webhook/acme/generic/dev", content=b'{"ref":"refs/heads/main"}', headers={"x-event-type": "push"}
        )
        assert r.status_code == 202


async def test_health_ready_metrics_and_base_path() -> None:
    e = Env(base_path="/orchestrator")
    async with client(e) as c:
        for path in ("/orchestrator/health", "/health"):
            r = await c.get(path)
            assert r.status_code == 200
            data = r.json()
            assert list(data)[:3] == ["status", "timestamp", "uptime"] and data["status"] == "ok"
            assert data["timestamp"].endswith("Z") and len(data["timestamp"]) == 24
            assert r.headers["x-request-id"]
        r = await c.get("/orchestrator/ready")
        assert r.json() == {"status": "ready", "checks": {"database": True}}
        text = (await c.get("/orchestrator/metrics")).text
        for name in (
            "kici_webhooks_received_total",
            "kici_dispatch_queue_depth",
            "kici_agents_active",
            "kici_platform_connection_status",
            "kici_trigger_match_duration_seconds",
        ):
            assert name in text
