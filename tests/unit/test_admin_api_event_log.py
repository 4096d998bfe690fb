"""Admin API event-log endpoints: list, filters, show with payload and trace, replay."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from kici_core.delivery_records import Delivery, DeliveryOutcome
from tests.support.admin_env import AUDITOR, SCOPED, Env, make_env

pytestmark = pytest.mark.anyio


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, client = await make_env()
    async with client:
        yield e


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
