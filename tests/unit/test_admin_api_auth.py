"""Admin API authentication, roles and admin/agent token endpoints, over the in-memory fakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from kici_core.token_records import AdminToken
from kici_runtime.orchestrator.admin.auth import PERMISSIONS, has_permission, token_hash
from tests.support.admin_env import ADMIN, AUDITOR, OWNER, PEM, Env, make_env

pytestmark = pytest.mark.anyio


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, client = await make_env()
    async with client:
        yield e


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
