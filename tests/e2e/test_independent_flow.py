"""``kici-standalone`` end to end in independent mode: sources registered with ``kici-admin``, signed webhooks
posted over HTTP, outcomes read from the database, from ``kici-admin`` (event log with its decision trace,
runs) and from ``/metrics``.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import (
    GENERIC_NAME,
    ORG,
    Independent,
    generic_headers,
    github_headers,
    install,
    new_delivery,
    poll,
    push_body,
)

pytestmark = pytest.mark.anyio

GUIDE_METRICS = (
    "kici_webhooks_received_total",
    "kici_webhooks_processed_total",
    "kici_trigger_match_duration_seconds",
    "kici_lockfile_cache_hits_total",
    "kici_lockfile_cache_misses_total",
    "kici_agents_active",
    "kici_dispatch_queue_depth",
    "kici_jobs_dispatched_total",
    "kici_platform_connection_status",
    "kici_dedup_hits_total",
)
RECEIVED_PUSH = 'kici_webhooks_received_total{event="push",source="direct"}'
PROCESSED_MATCHED = 'kici_webhooks_processed_total{result="matched"}'
PROCESSED_SKIPPED = 'kici_webhooks_processed_total{result="skipped"}'


async def test_push_runs_matching_workflow_once_and_admin_explains_it(independent: Independent) -> None:
    w = independent
    install(w.gh, "acme/app")
    before = await w.metrics()
    for name in GUIDE_METRICS:
        assert f"#TYPE {name}" in before, f"{name} missing from /metrics"

    delivery, resp = await w.push("acme/app")
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": True, "deliveryId": delivery}
    row = await w.wait_status(delivery, "processed")
    assert row["matched_count"] == 1 and row["repo_identifier"] == "acme/app" and row["inbox_state"] == "done"
    runs = await w.runs(delivery)
    assert [name for name, _ in runs] == ["build"]
    assert str(row["run_id"]) == runs[0][1]
    jobs = await w.query(
        "SELECT job_name, status FROM execution_jobs WHERE run_id = %s::uuid ORDER BY job_name", runs[0][1]
    )
    assert [j[0] for j in jobs] == ["compile", "test"]
    queued = await w.query("SELECT job_name FROM dispatch_queue WHERE delivery_id = %s", delivery)
    assert [q[0] for q in queued] == ["compile"]  # "test" waits for its need

    # The same delivery again: a duplicate, answered 200 and counted, nothing new recorded.
    body = push_body("acme/app")
    again = await w.post(f"/webhook/{ORG}/github", body, github_headers(body, delivery))
    assert again.status_code == 200 and again.json() == {"accepted": True, "deliveryId": delivery, "duplicate": True}
    assert len(await w.runs(delivery)) == 1
    assert (await w.query("SELECT count(*) FROM event_log WHERE delivery_id = %s", delivery))[0][0] == 1

    async def processing_counted() -> dict[str, float] | None:
        # processing runs in a child process, whose counters reach the serving process's /metrics shortly after
        seen = await w.metrics()
        return seen if seen.get(PROCESSED_MATCHED, 0) > before.get(PROCESSED_MATCHED, 0) else None

    after = await poll(processing_counted)
    assert after.get(RECEIVED_PUSH, 0) - before.get(RECEIVED_PUSH, 0) == 2
    assert after.get(PROCESSED_MATCHED, 0) - before.get(PROCESSED_MATCHED, 0) == 1
    assert after["kici_dedup_hits_total"] - before["kici_dedup_hits_total"] == 1
    assert after["kici_trigger_match_duration_seconds_count"] > before["kici_trigger_match_duration_seconds_count"]
    assert after["kici_lockfile_cache_misses_total"] + after["kici_lockfile_cache_hits_total"] > 0

    listing = (await w.admin("event-log", "list", "--org", ORG, "--delivery-id", delivery)).stdout
    header, rule, line, *_ = listing.splitlines()
    assert header.split() == [
        "received_at",
        "delivery_id",
        "routing_key",
        "event",
        "source",
        "status",
        "matched",
        "size",
    ]
    assert set(rule.replace(" ", "")) == {"-"}
    assert delivery in line and "processed" in line and "direct" in line and "push" in line
    assert line.split()[7] == "1"  # received_at is "<date> <time>"
    assert "Showing 1 of 1 (offset 0, limit 50)" in listing

    shown = (await w.admin("event-log", "show", delivery, "--org", ORG)).stdout
    assert f"Delivery: {delivery}" in shown
    assert "Status:        processed" in shown and "Repo:          acme/app" in shown
    assert f"First run:     {runs[0][1]}" in shown
    assert "Workflows (1 of 2 matched):" in shown
    assert "build: matched (trigger #0)" in shown
    assert "release: not matched" in shown
    assert "rejected by branch" in shown and '"release/*"' in shown and '"main"' in shown

    listed = json.loads((await w.admin("runs", "list", "--repo", "acme/app", "--json")).stdout)
    mine = [r for r in listed["runs"] if r["runId"] == runs[0][1]]
    assert len(mine) == 1 and mine[0]["workflowName"] == "build"
    table = (await w.admin("runs", "list", "--repo", "acme/app")).stdout
    assert runs[0][1] in table and "build" in table


async def test_push_to_other_branch_records_why_nothing_ran(independent: Independent) -> None:
    w = independent
    install(w.gh, "acme/app")
    before = await w.metrics()
    delivery, resp = await w.push("acme/app", branch="feature/login")
    assert resp.status_code == 202
    row = await w.wait_status(delivery, "processed")
    assert row["matched_count"] == 0 and row["run_id"] is None
    assert await w.runs(delivery) == []
    shown = (await w.admin("event-log", "show", delivery, "--org", ORG)).stdout
    assert "Workflows (0 of 2 matched):" in shown
    assert "build: not matched" in shown and "release: not matched" in shown
    assert '"feature/login"' in shown
    trace = json.loads((await w.admin("event-log", "show", delivery, "--org", ORG, "--json")).stdout)
    assert {d["workflowName"]: d["matched"] for d in trace["decisionTrace"]["decisions"]} == {
        "build": False,
        "release": False,
    }
    after = await w.metrics()
    assert after.get(PROCESSED_SKIPPED, 0) - before.get(PROCESSED_SKIPPED, 0) == 1


async def test_generic_and_ping_deliveries_are_recorded(independent: Independent) -> None:
    w = independent
    delivery = new_delivery()
    body = json.dumps({"service": "api", "version": "1.2.3"}).encode()
    resp = await w.post(
        f"/webhook/{ORG}/generic/{GENERIC_NAME}", body, {**generic_headers(body, delivery), "x-event-type": "deploy"}
    )
    assert resp.status_code == 202, resp.text
    stored_id = resp.json()["deliveryId"]
    assert stored_id.endswith(f":{delivery}") and stored_id.startswith("generic:")
    row = await w.wait_status(stored_id, "received")
    assert row["inbox_state"] == "done"
    generic = (await w.admin("event-log", "list", "--org", ORG, "--event", "deploy", "--wide")).stdout
    assert stored_id in generic

    ping = new_delivery()
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    resp = await w.post(f"/webhook/{ORG}/github", body, github_headers(body, ping, event="ping"))
    assert resp.status_code == 200 and resp.json() == {"accepted": True, "deliveryId": ping, "event": "ping"}
    row = await w.wait_status(ping, "received")
    assert "not supported" in (row["error_message"] or "")
