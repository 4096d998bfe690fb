"""Admin API GitHub source endpoints: add, validate, rotate, update, remove, scoped tokens."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kici_core import errors
from tests.support.admin_env import AUDITOR, PEM, SCOPED, Env, make_env, make_pem

pytestmark = pytest.mark.anyio


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
