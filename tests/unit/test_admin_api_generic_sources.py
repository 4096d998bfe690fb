"""Admin API generic and local source endpoints, over the in-memory fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.admin_env import AUDITOR, SCOPED, Env, make_env

pytestmark = pytest.mark.anyio


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, client = await make_env()
    async with client:
        yield e


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
