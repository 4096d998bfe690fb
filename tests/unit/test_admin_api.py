"""Admin API endpoints over the in-memory fakes, through httpx's ASGI transport (no sockets)."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kici_core import errors
from kici_core.delivery_records import Delivery, DeliveryOutcome
from kici_core.testing.fakes import (
    FakeBlobStore,
    FakeClock,
    FakeDeliveryInbox,
    FakeSecretStore,
    FakeSourceStore,
    FakeTokenStore,
)
from kici_core.token_records import AdminToken
from kici_runtime.orchestrator import bootstrap
from kici_runtime.orchestrator.admin import api as admin_api
from kici_runtime.orchestrator.admin.auth import PERMISSIONS, has_permission, token_hash
from kici_runtime.orchestrator.app import build_app
from kici_runtime.orchestrator.context import AppContext

pytestmark = pytest.mark.anyio

OWNER, ADMIN, AUDITOR, SCOPED = "o" * 64, "a" * 64, "u" * 64, "s" * 64


def make_pem(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


PEM = make_pem()


@dataclass
class Env:
    ctx: AppContext
    client: httpx.AsyncClient
    sources: FakeSourceStore
    secrets: FakeSecretStore
    tokens: FakeTokenStore
    inbox: FakeDeliveryInbox
    blobs: FakeBlobStore
    clock: FakeClock
    woken: list[int]

    async def call(self, method: str, path: str, token: str | None = OWNER, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.request(method, path, headers=headers, **kw)


def _ids() -> Any:
    n = iter(range(1, 10_000))
    return lambda: f"00000000-0000-4000-8000-{next(n):012d}"


async def make_env(**ctx_kw: Any) -> tuple[Env, httpx.AsyncClient]:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    blobs = FakeBlobStore()
    inbox = FakeDeliveryInbox(blobs, clock)
    sources, secrets, tokens = FakeSourceStore(clock), FakeSecretStore(), FakeTokenStore(clock)
    for tid, text, role, rk in (
        ("t-owner", OWNER, "owner", None),
        ("t-admin", ADMIN, "admin", None),
        ("t-aud", AUDITOR, "auditor", None),
        ("t-scoped", SCOPED, "admin", "github:42"),
    ):
        await tokens.create_admin_token(
            AdminToken(id=tid, label=tid, role=role, routing_key=rk),  # type: ignore[arg-type]
            token_hash(text),
        )
    woken: list[int] = []
    kw: dict[str, Any] = {
        "secret_key_configured": True,
        "tokens": tokens,
        "blobs": blobs,
        "sources": sources,
        "secrets": secrets,
        "inbox": inbox,
        "event_log": inbox,
        "clock": clock,
    }
    kw.update(ctx_kw)
    ctx = AppContext(mode="independent", ids=_ids(), wake_worker=lambda: woken.append(1), **kw)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(ctx, admin_api.routes)), base_url="http://admin.test"
    )
    return Env(ctx, client, sources, secrets, tokens, inbox, blobs, clock, woken), client


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, client = await make_env()
    async with client:
        yield e


async def add_github(
    env: Env, app_id: str = "42", secret: str | None = "whsec-original-1234", **extra: Any
) -> httpx.Response:
    body: dict[str, Any] = {"provider": "github", "name": "my-org", "appId": app_id, "privateKey": PEM, **extra}
    if secret:
        body["webhookSecret"] = secret
    return await env.call("POST", "/api/v1/admin/sources", json=body)


# ------------------------------------------------------------------------------------------ auth
async def test_missing_and_invalid_tokens(env: Env) -> None:
    r = await env.call("GET", "/api/v1/admin/sources", token=None)
    assert (r.status_code, r.json()) == (401, {"error": "Missing authorization"})
    r = await env.client.get("/api/v1/admin/sources", headers={"Authorization": f"Basic {OWNER}"})
    assert (r.status_code, r.json()) == (401, {"error": "Missing authorization"})
    r = await env.call("GET", "/api/v1/admin/sources", token="nope")
    assert (r.status_code, r.json()) == (401, {"error": "Invalid or expired token"})


async def test_revoked_and_expired_tokens_are_refused(env: Env) -> None:
    await env.tokens.revoke_admin_token("t-admin")
    assert (await env.call("GET", "/api/v1/admin/sources", token=ADMIN)).status_code == 401
    await env.tokens.create_admin_token(
        AdminToken(id="t-old", label="old", role="owner", expires_at=env.clock.now() - timedelta(seconds=1)),
        token_hash("x" * 64),
    )
    r = await env.call("GET", "/api/v1/admin/sources", token="x" * 64)
    assert r.json() == {"error": "Invalid or expired token"}


async def test_no_master_key_answers_503() -> None:
    e, client = await make_env(secret_key_configured=False)
    async with client:
        r = await e.call("GET", "/api/v1/admin/sources")
    assert (r.status_code, r.json()) == (503, {"error": "secrets subsystem disabled: set KICI_SECRET_KEY"})


def test_permission_table() -> None:
    assert has_permission("owner", "token.manage") and not has_permission("admin", "token.manage")
    assert has_permission("auditor", "event_log.read") and not has_permission("auditor", "event_log.read_payload")
    assert not has_permission("auditor", "context.create") and has_permission("auditor", "context.read")
    assert all(has_permission("owner", p) for p in PERMISSIONS)
    assert not has_permission("owner", "no.such.permission")


async def test_auditor_cannot_add_sources(env: Env) -> None:
    r = await env.call(
        "POST",
        "/api/v1/admin/sources",
        token=AUDITOR,
        json={"provider": "github", "name": "n", "appId": "1", "privateKey": PEM},
    )
    assert (r.status_code, r.json()) == (403, {"error": 'Role "auditor" does not have permission "context.create"'})


# ------------------------------------------------------------------------------------------ GitHub sources
async def test_add_github_source_stores_secrets_encrypted_side_and_hides_them(env: Env) -> None:
    r = await add_github(env)
    assert r.status_code == 201
    body = r.json()
    assert body["routingKey"] == "github:42" and body["name"] == "my-org"
    assert body["webhookUrl"] is None and body["webhookNote"] == "webhook-public-url-not-set"
    sid = body["id"]
    assert env.secrets.values[("__system__", f"__source__/{sid}", "privateKey")] == PEM
    assert env.secrets.values[("__system__", f"__source__/{sid}", "webhookSecret")] == "whsec-original-1234"
    listed = (await env.call("GET", "/api/v1/admin/sources", token=AUDITOR)).json()["sources"]
    assert [s["routingKey"] for s in listed] == ["github:42"]
    assert listed[0]["config"] == {"appId": "42"} and listed[0]["webhookSecretFingerprint"] == "…1234"
    text = json.dumps(listed)
    assert "whsec-original" not in text and "PRIVATE KEY" not in text


async def test_add_github_source_webhook_url_with_public_url() -> None:
    e, client = await make_env(webhook_public_url="https://ci.example.com/")
    async with client:
        r = await add_github(e, customerId="acme")
    assert r.json()["webhookUrl"] == "https://ci.example.com/webhook/acme/github"


async def test_add_github_source_validation(env: Env) -> None:
    r = await env.call("POST", "/api/v1/admin/sources", json={"provider": "github", "name": "x"})
    assert (r.status_code, r.json()) == (400, {"error": "Missing required fields: provider, name, appId, privateKey"})
    r = await env.call(
        "POST",
        "/api/v1/admin/sources",
        json={"provider": "github", "name": "x", "appId": "1", "privateKey": "not a pem"},
    )
    assert r.status_code == 400 and r.json()["error"] == "Validation error"
    assert r.json()["details"][0]["path"] == ["privateKey"] and "not a pem" not in r.text
    r = await env.call(
        "POST", "/api/v1/admin/sources", json={"provider": "github", "name": "x", "appId": "abc", "privateKey": PEM}
    )
    assert r.status_code == 400 and r.json()["details"][0]["path"] == ["appId"]
    r = await env.call("POST", "/api/v1/admin/sources", content=b"[1]")
    assert r.status_code == 400 and r.json()["error"] == "Validation error"


async def test_duplicate_github_source_is_409_naming_it(env: Env) -> None:
    sid = (await add_github(env)).json()["id"]
    r = await add_github(env, name="other-name")
    assert (r.status_code, r.json()) == (
        409,
        {
            "error": "Source with routing key github:42 already exists",
            "routingKey": "github:42",
            "id": sid,
            "name": "my-org",
        },
    )


async def test_github_app_is_checked_only_when_verify_is_asked() -> None:
    calls: list[str] = []

    async def check(app_id: str, pem: str, api_url: str | None) -> dict[str, Any]:
        calls.append(app_id)
        if app_id == "7":
            raise errors.UpstreamUnavailable("401 Bad credentials")
        return {"name": "KiCI Prod", "slug": "kici-prod"}

    e, client = await make_env(github_app_check=check)
    async with client:
        assert (await add_github(e, app_id="41")).json()["name"] == "my-org" and calls == []
        assert (await add_github(e, verify=True)).json()["name"] == "KiCI Prod" and calls == ["42"]
        r = await add_github(e, app_id="7", verify=True)
        assert (await add_github(e, verify=True)).status_code == 409 and calls == ["42", "7"]  # no call for a dup
    assert r.status_code == 400 and r.json()["error"] == (
        "GitHub API validation failed: 401 Bad credentials "
        "(without --verify the App is registered without contacting GitHub)"
    )
    assert (await e.sources.github_by_routing_key("github:42")).slug == "kici-prod"  # type: ignore[union-attr]
    assert await e.sources.github_by_routing_key("github:7") is None
    e, client = await make_env()  # KICI_SKIP_GITHUB_SOURCE_VALIDATION=true: no check available
    async with client:
        r = await add_github(e, verify=True)
    assert r.status_code == 400 and "KICI_SKIP_GITHUB_SOURCE_VALIDATION=true" in r.json()["error"]


async def test_rotate_webhook_secret_keeps_previous(env: Env) -> None:
    sid = (await add_github(env)).json()["id"]
    r = await env.call("PATCH", "/api/v1/admin/sources/github:42", json={"webhookSecret": "whsec-next-5678"})
    assert (r.status_code, r.json()) == (200, {"routingKey": "github:42", "name": "my-org"})
    scope = ("__system__", f"__source__/{sid}")
    assert env.secrets.values[(*scope, "webhookSecret")] == "whsec-next-5678"
    assert env.secrets.values[(*scope, "webhookSecretPrevious")] == "whsec-original-1234"
    listed = (await env.call("GET", "/api/v1/admin/sources")).json()["sources"][0]
    assert listed["rotationWindow"] is True
    await env.call("PATCH", "/api/v1/admin/sources/github:42", json={"dropPreviousWebhookSecret": True})
    assert (*scope, "webhookSecretPrevious") not in env.secrets.values


async def test_rotated_secret_verifies_live_on_the_webhook_route(env: Env) -> None:
    from kici_core import webhooks

    await add_github(env)
    await env.call("PATCH", "/api/v1/admin/sources/github:42", json={"webhookSecret": "whsec-next-5678"})
    body = b'{"zen":"hi"}'
    for n, secret in enumerate(("whsec-original-1234", "whsec-next-5678", "wrong")):
        r = await env.client.post(
            "/webhook/acme/github",
            content=body,
            headers={
                "X-GitHub-Hook-Installation-Target-Type": "integration",
                "X-GitHub-Hook-Installation-Target-ID": "42",
                "X-GitHub-Event": "ping",
                "X-GitHub-Delivery": f"d-{n}",
                "Content-Type": "application/json",
                "X-Hub-Signature-256": "sha256=" + webhooks.hmac_sha256_hex(secret, body),
            },
        )
        assert r.status_code == (401 if secret == "wrong" else 200)


async def test_update_rename_key_and_not_found(env: Env) -> None:
    await add_github(env)
    other = make_pem()
    r = await env.call("PATCH", "/api/v1/admin/sources/github:42", json={"name": "renamed", "privateKey": other})
    assert r.json()["name"] == "renamed"
    sid = (await env.sources.github_by_routing_key("github:42")).id  # type: ignore[union-attr]
    assert env.secrets.values[("__system__", f"__source__/{sid}", "privateKey")] == other
    r = await env.call("PATCH", "/api/v1/admin/sources/github:9", json={"name": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "Source not found"})
    r = await env.call("PATCH", "/api/v1/admin/sources/github:42", json={"name": 5})
    assert r.status_code == 400


async def test_remove_github_source_is_idempotent_and_drops_secrets(env: Env) -> None:
    await add_github(env)
    assert (await env.call("DELETE", "/api/v1/admin/sources/github:42")).json() == {"ok": True}
    assert env.secrets.values == {} and env.sources.github == {}
    assert (await env.call("DELETE", "/api/v1/admin/sources/github:42")).json() == {"ok": True}


async def test_get_webhook_secret(env: Env) -> None:
    await add_github(env)
    r = await env.call("GET", "/api/v1/admin/sources/github:42/webhook-secret")
    assert r.json() == {"routingKey": "github:42", "webhookSecret": "whsec-original-1234"}
    r = await env.call("GET", "/api/v1/admin/sources/github:42/webhook-secret", token=AUDITOR)
    assert r.status_code == 403
    r = await env.call("GET", "/api/v1/admin/sources/github:1/webhook-secret")
    assert r.status_code == 404


async def test_scoped_token(env: Env) -> None:
    await add_github(env, app_id="42")
    await add_github(env, app_id="43")
    listed = (await env.call("GET", "/api/v1/admin/sources", token=SCOPED)).json()["sources"]
    assert [s["routingKey"] for s in listed] == ["github:42"]
    r = await env.call("PATCH", "/api/v1/admin/sources/github:43", token=SCOPED, json={"name": "x"})
    assert r.status_code == 403 and "restricted to a single routing key" in r.json()["error"]
    r = await env.call("PATCH", "/api/v1/admin/sources/github:42", token=SCOPED, json={"name": "x"})
    assert r.status_code == 200
    for method, path in (
        ("POST", "/api/v1/admin/sources"),
        ("GET", "/api/v1/admin/tokens"),
        ("POST", "/api/v1/admin/rotate-key"),
        ("POST", "/api/v1/admin/generic-sources"),
        ("POST", "/api/v1/admin/db/migrate"),
        ("GET", "/api/v1/agent-tokens"),
    ):
        r = await env.call(method, path, token=SCOPED, json={})
        assert r.status_code == 403, path
        assert r.json()["error"].startswith("Access denied: this route requires an unscoped admin token")


# ------------------------------------------------------------------------------------------ generic sources
async def create_generic(env: Env, **body: Any) -> httpx.Response:
    payload = {"orgId": "acme", "name": "hooks", "verificationConfig": {"secret": "gen-secret-abcd"}, **body}
    return await env.call("POST", "/api/v1/admin/generic-sources", json=payload)


async def test_generic_source_lifecycle(env: Env) -> None:
    r = await create_generic(env, allowedEvents=["deploy"], rateLimitRpm=60)
    assert r.status_code == 201
    src = r.json()["source"]
    sid = src["id"]
    assert src["routingKey"] == f"generic:acme:{sid}" and src["verificationMethod"] == "hmac_sha256"
    assert src["verificationConfig"] == {"secretRef": True, "secretFingerprint": "…abcd"}
    assert src["allowedEvents"] == ["deploy"] and src["rateLimitRpm"] == 60
    assert env.secrets.values[("__system__", f"__webhook__/{sid}", "secret")] == "gen-secret-abcd"
    assert "gen-secret" not in r.text

    r = await env.call("GET", "/api/v1/admin/generic-sources?orgId=acme", token=AUDITOR)
    assert [s["id"] for s in r.json()["sources"]] == [sid]
    other = (await create_generic(env, orgId="beta")).json()["source"]["id"]
    r = await env.call("GET", "/api/v1/admin/generic-sources")  # every org's sources
    assert (r.status_code, sorted(s["id"] for s in r.json()["sources"])) == (200, sorted([sid, other]))
    r = await env.call("GET", "/api/v1/admin/generic-sources?orgId=acme")
    assert [s["id"] for s in r.json()["sources"]] == [sid]
    await env.call("DELETE", f"/api/v1/admin/generic-sources/{other}?hard=true")
    assert (await env.call("GET", f"/api/v1/admin/generic-sources/{sid}")).json()["source"]["name"] == "hooks"
    assert (await env.call("GET", "/api/v1/admin/generic-sources/nope")).json() == {"error": "Source not found"}

    r = await env.call("POST", f"/api/v1/admin/generic-sources/{sid}/disable")
    assert r.json() == {"enabled": False}
    assert (await env.sources.generic_by_id(sid)).enabled is False  # type: ignore[union-attr]
    assert (await env.call("POST", f"/api/v1/admin/generic-sources/{sid}/enable")).json() == {"enabled": True}

    r = await env.call(
        "PATCH",
        f"/api/v1/admin/generic-sources/{sid}",
        json={"verificationMethod": "bearer_token", "verificationConfig": {"token": "tok-9999"}},
    )
    assert r.json()["source"]["verificationMethod"] == "bearer_token"
    assert env.secrets.values == {("__system__", f"__webhook__/{sid}", "token"): "tok-9999"}
    r = await env.call("PATCH", f"/api/v1/admin/generic-sources/{sid}", json={"verificationMethod": "api_key"})
    assert r.status_code == 400  # a new secret-bearing method needs its secret

    r = await env.call("DELETE", f"/api/v1/admin/generic-sources/{sid}")
    assert r.json() == {"deleted": True, "hard": False}
    assert (await env.sources.generic_by_id(sid)).deleted_at is not None  # type: ignore[union-attr]
    r = await env.call("DELETE", f"/api/v1/admin/generic-sources/{sid}?hard=true")
    assert r.json() == {"deleted": True, "hard": True}
    assert env.secrets.values == {} and sid not in env.sources.generic


async def test_generic_source_validation_and_conflict(env: Env) -> None:
    r = await env.call("POST", "/api/v1/admin/generic-sources", json={"name": "x", "verificationMethod": "rot13"})
    assert r.status_code == 400
    paths = {d["path"][0] for d in r.json()["details"]}
    assert {"orgId", "verificationMethod"} <= paths
    r = await env.call("POST", "/api/v1/admin/generic-sources", json={"orgId": "acme", "name": "x"})
    assert r.status_code == 400 and "secret is required" in r.text
    sid = (await create_generic(env)).json()["source"]["id"]
    r = await create_generic(env)
    assert (r.status_code, r.json()) == (
        409,
        {
            "error": f'Generic source "hooks" already exists in org acme (id {sid})',
            "routingKey": f"generic:acme:{sid}",
            "id": sid,
            "name": "hooks",
            "orgId": "acme",
        },
    )
    other = (await create_generic(env, name="other")).json()["source"]["id"]
    r = await env.call("PATCH", f"/api/v1/admin/generic-sources/{other}", json={"name": "hooks"})
    assert r.status_code == 409 and r.json()["id"] == sid
    assert (await create_generic(env, orgId="beta")).status_code == 201  # names are per org


async def test_generic_source_bodies_name_nested_paths_and_keep_secrets_out(env: Env) -> None:
    r = await create_generic(
        env,
        allowedEvents=["deploy", 7],
        dedupWindowSeconds=True,
        maxPayloadBytes=0,
        enabled="yes",
        verificationConfig={"secret": "gen-secret-abcd"},
    )
    assert r.status_code == 400 and r.json()["details"] == [
        {"path": ["dedupWindowSeconds"], "message": "must be an integer in 0..2592000"},
        {"path": ["maxPayloadBytes"], "message": "must be an integer in 1..10485760"},
        {"path": ["allowedEvents", 1], "message": "must be a string"},
        {"path": ["enabled"], "message": "must be a boolean"},
    ]
    assert "gen-secret-abcd" not in r.text
    r = await create_generic(env, name=None, verificationConfig="gen-secret-abcd")
    assert r.status_code == 400 and r.json()["details"] == [
        {"path": ["name"], "message": "is required"},
        {"path": ["verificationConfig"], "message": "must be an object"},
    ]
    assert "gen-secret-abcd" not in r.text
    sid = (await create_generic(env, eventTypeHeader="X-Event")).json()["source"]["id"]
    r = await env.call("PATCH", f"/api/v1/admin/generic-sources/{sid}", json={"eventTypeHeader": None})
    assert r.status_code == 200 and r.json()["source"]["eventTypeHeader"] is None  # null clears
    r = await env.call("PATCH", f"/api/v1/admin/generic-sources/{sid}", json={"name": None})
    assert r.json()["details"] == [{"path": ["name"], "message": "must be a string"}]


async def test_local_source(env: Env) -> None:
    local = {"orgId": "acme", "name": "repo", "providerType": "local", "gitConfig": {"url": "file:///srv/repo"}}
    r = await env.call("POST", "/api/v1/admin/generic-sources", json=local)
    assert r.status_code == 400 and "local sources are disabled" in r.text  # neither KICI_DEV nor the opt-in
    env.ctx.local_sources_enabled = True
    r = await env.call(
        "POST", "/api/v1/admin/generic-sources", json={"orgId": "acme", "name": "repo", "providerType": "local"}
    )
    assert r.status_code == 400 and "file://" in r.text
    r = await env.call("POST", "/api/v1/admin/generic-sources", json={**local, "verificationMethod": "none"})
    assert r.status_code == 400 and "a local source needs verification" in r.text
    r = await env.call("POST", "/api/v1/admin/generic-sources", json=local)
    assert r.status_code == 400 and "secret is required for hmac_sha256" in r.text  # HMAC by default
    r = await env.call(
        "POST", "/api/v1/admin/generic-sources", json={**local, "verificationConfig": {"secret": "s3cret-local"}}
    )
    src = r.json()["source"]
    assert (r.status_code, src["providerType"], src["verificationMethod"]) == (201, "local", "hmac_sha256")
    assert src["gitConfig"] == {"url": "file:///srv/repo"}
    r = await env.call("PATCH", f"/api/v1/admin/generic-sources/{src['id']}", json={"gitConfig": None})
    assert r.json()["source"]["gitConfig"] is None


async def test_generic_source_is_live_immediately(env: Env) -> None:
    sid = (await create_generic(env)).json()["source"]["id"]
    from kici_core import webhooks

    body = b'{"a":1}'
    r = await env.client.post(
        "/webhook/acme/generic/hooks",
        content=body,
        headers={
            "X-Signature-256": "sha256=" + webhooks.hmac_sha256_hex("gen-secret-abcd", body),
            "Content-Type": "application/json",
            "X-Idempotency-Key": "k1",
        },
    )
    assert r.status_code == 202, r.text
    await env.call("POST", f"/api/v1/admin/generic-sources/{sid}/disable")
    r = await env.client.post("/webhook/acme/generic/hooks", content=body)
    assert r.status_code == 404


async def test_generic_scoped_token(env: Env) -> None:
    sid = (await create_generic(env)).json()["source"]["id"]
    r = await env.call("GET", f"/api/v1/admin/generic-sources/{sid}", token=SCOPED)
    assert r.status_code == 403
    r = await env.call("GET", "/api/v1/admin/generic-sources?orgId=acme", token=SCOPED)
    assert r.json() == {"sources": []}


# ------------------------------------------------------------------------------------------ event log
async def accept(env: Env, delivery_id: str, *, event: str = "push", rk: str = "github:42", seconds: int = 0) -> None:
    await env.inbox.accept(
        Delivery(
            org_id="acme",
            delivery_id=delivery_id,
            routing_key=rk,
            event=event,
            action=None,
            source="direct",
            provider="github",
            body=json.dumps({"ref": "refs/heads/main", "n": delivery_id}).encode(),
            received_at=env.clock.now() + timedelta(seconds=seconds),
        )
    )


async def test_event_log_list_and_filters(env: Env) -> None:
    for i in range(3):
        await accept(env, f"d-{i}", seconds=i, rk="github:42" if i < 2 else "github:43")
    r = await env.call("GET", "/api/v1/admin/event-log", token=AUDITOR)
    body = r.json()
    assert [d["deliveryId"] for d in body["deliveries"]] == ["d-2", "d-1", "d-0"]
    assert (body["total"], body["limit"], body["offset"]) == (3, 50, 0)
    first = body["deliveries"][0]
    assert first["receivedAt"] == "2026-03-01T00:00:02.000Z" and first["status"] == "received"
    assert set(first) >= {
        "orgId",
        "routingKey",
        "event",
        "action",
        "source",
        "provider",
        "repoIdentifier",
        "ref",
        "matchedCount",
        "runId",
        "errorMessage",
        "archivedAt",
        "payloadOmitted",
        "payloadOmittedReason",
        "payloadSizeBytes",
        "payloadHash",
    }
    r = await env.call("GET", "/api/v1/admin/event-log?routingKey=github:43&limit=500")
    assert [d["deliveryId"] for d in r.json()["deliveries"]] == ["d-2"] and r.json()["limit"] == 200
    r = await env.call("GET", "/api/v1/admin/event-log?from=2026-03-01T00:00:01Z&to=2026-03-01T00:00:02Z")
    assert [d["deliveryId"] for d in r.json()["deliveries"]] == ["d-1"]
    r = await env.call("GET", "/api/v1/admin/event-log?limit=1&offset=1")
    assert [d["deliveryId"] for d in r.json()["deliveries"]] == ["d-1"] and r.json()["total"] == 3
    r = await env.call("GET", "/api/v1/admin/event-log?from=yesterday")
    assert r.status_code == 400
    r = await env.call("GET", "/api/v1/admin/event-log?routingKey=github:43", token=SCOPED)
    assert [d["deliveryId"] for d in r.json()["deliveries"]] == ["d-1", "d-0"]


async def test_event_log_show_with_payload_and_trace(env: Env) -> None:
    await accept(env, "d-1")
    [item] = await env.inbox.claim(worker_id="w", limit=1, lease_seconds=30)
    trace: dict[str, Any] = {
        "eventType": "push",
        "decisions": [{"workflowName": "ci", "matched": False, "triggers": []}],
    }
    await env.inbox.complete(item, DeliveryOutcome(status="processed", decision_trace=trace), [])
    r = await env.call("GET", "/api/v1/admin/event-log/d-1")  # without orgId: the one org that holds it
    assert (r.status_code, r.json()["orgId"], r.json()["decisionTrace"]) == (200, "acme", trace)
    await env.inbox.accept(
        Delivery(
            org_id="beta",
            delivery_id="d-1",
            routing_key="github:42",
            event="push",
            action=None,
            source="direct",
            provider="github",
            body=b"{}",
            received_at=env.clock.now(),
        )
    )
    r = await env.call("GET", "/api/v1/admin/event-log/d-1")
    assert (r.status_code, r.json()) == (
        409,
        {"error": "Delivery d-1 exists in 2 orgs (acme, beta): name one with orgId", "orgIds": ["acme", "beta"]},
    )
    assert (await env.call("GET", "/api/v1/admin/event-log/d-1?orgId=beta")).json()["orgId"] == "beta"
    assert (await env.call("GET", "/api/v1/admin/event-log/nope")).status_code == 404
    r = await env.call("GET", "/api/v1/admin/event-log/nope?orgId=acme")
    assert (r.status_code, r.json()) == (404, {"error": "Delivery not found"})
    r = await env.call("GET", "/api/v1/admin/event-log/d-1?orgId=acme", token=AUDITOR)
    assert r.json()["decisionTrace"] == trace and "payload" not in r.json()
    r = await env.call("GET", "/api/v1/admin/event-log/d-1?orgId=acme&includePayload=true", token=AUDITOR)
    assert r.status_code == 403 and "event_log.read_payload" in r.json()["error"]
    r = await env.call("GET", "/api/v1/admin/event-log/d-1?orgId=acme&includePayload=true")
    assert r.json()["payload"] == {"ref": "refs/heads/main", "n": "d-1"}
    env.blobs.objects.clear()
    r = await env.call("GET", "/api/v1/admin/event-log/d-1?orgId=acme&includePayload=true")
    assert r.json()["payloadReadError"] == "Failed to read payload from object storage"


async def test_event_log_replay(env: Env) -> None:
    await accept(env, "d-1")
    [item] = await env.inbox.claim(worker_id="w", limit=1, lease_seconds=30)
    await env.inbox.fail(item, "boom", retry_after=None)
    assert await env.inbox.depth() == 0
    r = await env.call("POST", "/api/v1/admin/event-log/d-1/replay?orgId=acme", token=AUDITOR)
    assert r.status_code == 403
    r = await env.call("POST", "/api/v1/admin/event-log/d-1/replay?orgId=acme")
    assert (r.status_code, r.json()["replayed"]) == (202, True)
    assert await env.inbox.depth() == 1 and env.woken == [1]
    r = await env.call("POST", "/api/v1/admin/event-log/zzz/replay?orgId=acme")
    assert r.status_code == 404


async def test_event_log_payload_reads_real_gzip(env: Env) -> None:
    await accept(env, "d/with/slash")
    key = next(iter(env.blobs.objects))
    assert gzip.decompress(env.blobs.objects[key]).startswith(b"{")
    r = await env.call("GET", "/api/v1/admin/event-log/d/with/slash?orgId=acme&includePayload=true")
    assert r.json()["deliveryId"] == "d/with/slash" and r.json()["payload"]["n"] == "d/with/slash"


# ------------------------------------------------------------------------------------------ tokens
async def test_admin_tokens(env: Env) -> None:
    r = await env.call("POST", "/api/v1/admin/tokens", token=ADMIN, json={"label": "ci", "role": "auditor"})
    assert r.status_code == 403
    r = await env.call("POST", "/api/v1/admin/tokens", json={"label": "ci", "role": "auditor"})
    assert r.status_code == 201
    new = r.json()
    assert len(new["token"]) == 64 and int(new["token"], 16) >= 0
    assert (await env.call("GET", "/api/v1/admin/event-log", token=new["token"])).status_code == 200
    listed = (await env.call("GET", "/api/v1/admin/tokens")).json()["tokens"]
    mine = next(t for t in listed if t["id"] == new["id"])
    assert mine["role"] == "auditor" and mine["revoked"] is False and mine["routing_key"] is None
    assert new["token"] not in json.dumps(listed)
    assert (await env.call("DELETE", f"/api/v1/admin/tokens/{new['id']}")).json() == {"revoked": True}
    assert (await env.call("GET", "/api/v1/admin/event-log", token=new["token"])).status_code == 401
    assert (await env.call("DELETE", f"/api/v1/admin/tokens/{new['id']}")).status_code == 404
    r = await env.call("POST", "/api/v1/admin/tokens", json={"label": "", "role": "god"})
    assert r.status_code == 400 and {d["path"][0] for d in r.json()["details"]} == {"label", "role"}


async def test_token_bodies_name_each_wrong_field_by_its_path_and_echo_no_value(env: Env) -> None:
    r = await env.call(
        "POST",
        "/api/v1/agent-tokens",
        json={"labels": ["linux", "x64", 7], "mandatoryLabels": "gpu", "createdBy": None},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": "Validation error",
        "details": [
            {"path": ["labels", 2], "message": "must be a string"},
            {"path": ["mandatoryLabels"], "message": "must be an array of strings"},
            {"path": ["createdBy"], "message": "must be a string"},
        ],
    }
    assert (await env.call("GET", "/api/v1/agent-tokens")).json()["tokens"] == []  # nothing was created
    secretish = "ghp_" + "Z" * 36
    r = await env.call("POST", "/api/v1/admin/tokens", json={"label": True, "routingKey": "", "note": secretish})
    assert r.status_code == 400 and r.json()["details"] == [
        {"path": ["label"], "message": "must be a string"},
        {"path": ["role"], "message": "is required: one of owner, admin, auditor"},
        {"path": ["routingKey"], "message": "must be 1..255 characters"},
    ]
    assert secretish not in r.text
    r = await env.call("POST", "/api/v1/admin/tokens", json={"label": "x" * 256, "role": "owner", "routingKey": None})
    assert r.status_code == 400 and r.json()["details"] == [
        {"path": ["label"], "message": "must be 1..255 characters"},
        {"path": ["routingKey"], "message": "must be a string"},
    ]
    # unknown fields are ignored, as before
    r = await env.call("POST", "/api/v1/agent-tokens", json={"labels": ["linux"], "comment": "build pool"})
    assert r.status_code == 201 and r.json()["labels"] == ["linux"]


async def test_agent_tokens() -> None:
    kicked: list[str] = []

    async def kick(token_id: str) -> int:
        kicked.append(token_id)
        return 2

    e, client = await make_env(kick_agent_token=kick)
    async with client:
        r = await e.call("POST", "/api/v1/agent-tokens", json={"labels": ["linux"], "mandatoryLabels": ["gpu"]})
        assert r.status_code == 201
        body = r.json()
        assert body["token"].startswith("kat_") and len(body["token"]) == 68
        assert body["tokenPrefix"] == body["token"][:12] and body["agentType"] == "static"
        stored = await e.tokens.agent_token_by_hash(token_hash(body["token"]))
        assert stored is not None and stored.mandatory_labels == ("gpu",)
        listed = (await e.call("GET", "/api/v1/agent-tokens")).json()["tokens"]
        assert [t["id"] for t in listed] == [body["id"]] and "token" not in listed[0]
        assert (await e.call("GET", "/api/v1/agent-tokens?type=ephemeral")).json() == {"tokens": []}
        assert (await e.call("DELETE", f"/api/v1/agent-tokens/{body['id']}")).json() == {"kicked": 2}
        assert kicked == [body["id"]]
        r = await e.call("DELETE", f"/api/v1/agent-tokens/{body['id']}")
        assert (r.status_code, r.json()) == (404, {"error": "Agent token not found or already revoked"})
        assert (await e.call("GET", "/api/v1/agent-tokens", token=ADMIN)).status_code == 403


# ------------------------------------------------------------------------------------------ key, db, errors
async def test_rotate_key_and_db() -> None:
    async def rotate() -> int:
        return 5

    async def migrate() -> list[str]:
        return ["0002_x.sql"]

    async def status() -> list[dict[str, Any]]:
        return [{"name": "0001_initial.sql", "status": "applied", "appliedAt": "2026-01-01T00:00:00.000Z"}]

    e, client = await make_env(rotate_key=rotate, migrate=migrate, migration_status=status)
    async with client:
        assert (await e.call("POST", "/api/v1/admin/rotate-key", token=ADMIN)).status_code == 403
        r = await e.call("POST", "/api/v1/admin/rotate-key")
        assert r.json() == {"reEncrypted": 5, "reEncryptedConfigs": 0, "skippedConfigs": 0}
        assert (await e.call("POST", "/api/v1/admin/db/migrate")).json() == {"applied": 1, "migrations": ["0002_x.sql"]}
        r = await e.call("GET", "/api/v1/admin/db/migrate/status")
        assert r.json()["migrations"][0]["status"] == "applied"


async def test_unwired_operations_answer_503(env: Env) -> None:
    for method, path in (
        ("POST", "/api/v1/admin/rotate-key"),
        ("POST", "/api/v1/admin/db/migrate"),
        ("GET", "/api/v1/admin/db/migrate/status"),
    ):
        assert (await env.call(method, path)).status_code == 503


async def test_storage_outage_and_internal_errors() -> None:
    class Broken(FakeSourceStore):
        async def list_github(self) -> Any:
            raise errors.StorageUnavailable("db down")

        async def list_generic(self, org_id: str | None = None, *, include_deleted: bool = False) -> Any:
            raise RuntimeError("bug with secret-ish detail")

    e, client = await make_env(sources=Broken())
    async with client:
        r = await e.call("GET", "/api/v1/admin/sources")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        r = await e.call("GET", "/api/v1/admin/generic-sources?orgId=acme")
        assert (r.status_code, r.json()) == (500, {"error": "Internal server error"})


# ------------------------------------------------------------------------------------------ bootstrap
async def test_bootstrap_from_env_and_generated() -> None:
    tokens = FakeTokenStore()
    out = io.StringIO()
    ids = _ids()
    assert await bootstrap.ensure_bootstrap_token(tokens, "first-value", new_id=ids, out=out) is None
    assert out.getvalue() == ""
    assert (await tokens.admin_token_by_hash(token_hash("first-value"))) is not None
    await bootstrap.ensure_bootstrap_token(tokens, "second-value", new_id=ids, out=out)
    assert await tokens.admin_token_by_hash(token_hash("first-value")) is None
    assert (await tokens.admin_token_by_hash(token_hash("second-value"))).role == "owner"  # type: ignore[union-attr]
    # tokens exist: nothing generated
    assert await bootstrap.ensure_bootstrap_token(tokens, None, new_id=ids, out=out) is None

    empty = FakeTokenStore()
    generated = await bootstrap.ensure_bootstrap_token(empty, None, new_id=ids, out=out)
    assert generated is not None and len(generated) == 64
    assert out.getvalue() == f"\n  KICI Admin Token: {generated}\n"
    assert (await empty.admin_token_by_hash(token_hash(generated))).label == "bootstrap"  # type: ignore[union-attr]


async def test_bootstrap_logs_no_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    await bootstrap.ensure_bootstrap_token(FakeTokenStore(), "very-secret-bootstrap", new_id=_ids(), out=io.StringIO())
    assert "Bootstrap admin token ensured" in caplog.text and "very-secret-bootstrap" not in caplog.text
