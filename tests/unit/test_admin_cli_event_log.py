"""kici-admin event-log commands against the real admin app over the fakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from kici_core.delivery_records import Delivery, DeliveryOutcome
from tests.support.admin_env import Harness, open_harness


@pytest.fixture
def h() -> Iterator[Harness]:
    with open_harness() as harness:
        yield harness


# ------------------------------------------------------------------------------------------ event log
def _seed(h: Harness) -> None:
    async def seed() -> None:
        env = h.env
        for i, (event, size) in enumerate((("push", 10), ("pull_request", 3000))):
            await env.inbox.accept(
                Delivery(
                    org_id="acme",
                    delivery_id=f"d-{i}",
                    routing_key="github:123456",
                    event=event,
                    action="opened" if event == "pull_request" else None,
                    source="direct",
                    provider="github",
                    body=json.dumps({"pad": "x" * size, "token": "not-a-secret"}).encode(),
                    received_at=env.clock.now() + timedelta(seconds=i),
                )
            )
        [item, _] = await env.inbox.claim(worker_id="w", limit=2, lease_seconds=30)
        trace: dict[str, Any] = {
            "eventType": "push",
            "action": None,
            "matchedWorkflows": ["ci"],
            "totalWorkflows": 2,
            "decisions": [
                {
                    "workflowName": "ci",
                    "matched": True,
                    "matchedTrigger": 0,
                    "summary": "Trigger conditions met",
                    "checksCount": 1,
                    "triggers": [],
                },
                {
                    "workflowName": "deploy",
                    "matched": False,
                    "matchedTrigger": None,
                    "summary": "No matching trigger",
                    "checksCount": 2,
                    "triggers": [
                        {
                            "index": 0,
                            "triggerType": "push",
                            "matched": False,
                            "reason": "branch not matched",
                            "checks": [
                                {"check": "event type", "pattern": "push", "value": "push", "passed": True},
                                {
                                    "check": "branch",
                                    "pattern": "release/*",
                                    "value": "main",
                                    "passed": False,
                                    "reason": "branch not matched",
                                },
                            ],
                        },
                        {"index": 1, "triggerType": "tag", "matched": False, "reason": "not a tag push", "checks": []},
                    ],
                },
            ],
        }
        await env.inbox.complete(
            item,
            DeliveryOutcome(
                status="processed", matched_count=1, repo_identifier="o/r", ref="refs/heads/main", decision_trace=trace
            ),
            [],
        )

    h.call(seed)


def test_event_log_list_table(h: Harness) -> None:
    assert h.run("event-log", "list").output.strip() == "No deliveries found."
    _seed(h)
    r = h.run("event-log", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == [
        "received_at",
        "delivery_id",
        "routing_key",
        "event",
        "source",
        "status",
        "matched",
        "size",
    ]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == [
        "2026-03-01",
        "00:00:01",
        "d-1",
        "github:123456",
        "pull_request:opened",
        "direct",
        "received",
        "0",
        "3.0KB",
    ]
    assert lines[3].split()[2:] == ["d-0", "github:123456", "push", "direct", "processed", "1", "46B"]
    assert lines[-2:] == ["", "Showing 2 of 2 (offset 0, limit 50)"]
    r = h.run("event-log", "list", "--event", "push", "--limit", "1", "--json")
    doc = json.loads(r.output)
    assert [d["deliveryId"] for d in doc["deliveries"]] == ["d-0"] and doc["limit"] == 1
    r = h.run("event-log", "list", "--since", "not-a-date")
    assert r.exit_code == 1 and "HTTP 400" in r.output


def test_event_log_list_fits_120_columns_with_long_ids(h: Harness) -> None:
    source_id = "3f2b8c1e-9d4a-4f6b-8e2c-7a1d5b9c0e44"
    routing_key = f"generic:platform-team:{source_id}"
    long_ids = [f"{routing_key}:deploy-2026-03-01T00:00:0{i}Z-{'a' * 30}" for i in range(3)]

    async def seed() -> None:
        for i, delivery_id in enumerate(long_ids):
            await h.env.inbox.accept(
                Delivery(
                    org_id="platform-team",
                    delivery_id=delivery_id,
                    routing_key=routing_key,
                    event="pull_request_review_comment",
                    action="created",
                    source="relay",
                    provider="generic",
                    body=b"{}",
                    received_at=h.env.clock.now() + timedelta(seconds=i),
                )
            )
        await h.env.inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
                routing_key="github:123456",
                event="push",
                action=None,
                source="direct",
                provider="github",
                body=b"{}",
                received_at=h.env.clock.now() + timedelta(seconds=9),
            )
        )

    h.call(seed)
    r = h.run("event-log", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 120, "\n" + r.output
    assert lines[2].split()[2:4] == ["72d3162e-cc78-11e3-81ab-4c9367dc0958", "github:123456"]  # a GUID stays whole
    shown = [line.split()[2] for line in lines[3:6]]
    assert all(
        "…" in cell and long_ids[2 - i].startswith(cell.split("…")[0]) and long_ids[2 - i].endswith(cell.split("…")[1])
        for i, cell in enumerate(shown)
    ), shown
    wide = h.run("event-log", "list", "--wide").output
    assert all(d in wide for d in long_ids)
    doc = json.loads(h.run("event-log", "list", "--json").output)
    assert sorted(d["deliveryId"] for d in doc["deliveries"] if d["orgId"] == "platform-team") == sorted(long_ids)


def test_event_log_show_explains_why(h: Harness) -> None:
    _seed(h)
    r = h.run("event-log", "show", "d-0", "--org", "acme")
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith("Delivery: d-0\n  Org:           acme\n  Routing key:   github:123456\n")
    assert "  Repo:          o/r\n" in out and "  Status:        processed\n" in out
    assert "  Payload:       stored -- 46B\n" in out
    assert "Workflows (1 of 2 matched):" in out
    assert "  ci: matched (trigger #0)" in out
    assert "  deploy: not matched — No matching trigger" in out
    assert '    trigger #0 (push): rejected by branch: pattern "release/*", value "main" — branch not matched' in out
    assert "    trigger #1 (tag): rejected: not a tag push" in out
    assert "Payload:\n" not in out
    r = h.run("event-log", "show", "d-0", "--org", "acme", "--payload")
    assert '"token": "not-a-secret"' in r.output
    r = h.run("event-log", "show", "d-1", "--org", "acme")
    assert "No decision trace recorded (status received)." in r.output
    r = h.run("event-log", "show", "zzz", "--org", "acme")
    assert r.exit_code == 1 and r.output.strip() == "Error: HTTP 404: Delivery not found"
    r = h.run("event-log", "show", "d-0")  # the guide's form: no --org
    assert r.exit_code == 0 and r.output.startswith("Delivery: d-0\n  Org:           acme\n")


def test_event_log_replay(h: Harness) -> None:
    _seed(h)
    r = h.run("event-log", "replay", "d-0", "--org", "acme")
    assert r.output.strip() == "Delivery d-0 queued for processing again."
    assert h.env.woken == [1]
