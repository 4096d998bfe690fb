"""The deploy guide's ``kici-admin`` commands, exactly as written, against a real ``kici-standalone`` (its own
PostgreSQL database, the local GitHub API server): ``source add github`` without contacting GitHub unless
``--verify``, re-adding a source, ``source list`` without ``--org``, ``source update-generic``,
``event-log show <deliveryId>`` without ``--org`` (and when two orgs hold the id), ``runs jobs`` and an
``event-log list`` that fits 120 columns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kici_adapters.postgres import migrate
from tests.e2e.conftest import (
    ADMIN_TOKEN,
    APP_ID,
    ORG,
    WEBHOOK_SECRET,
    Independent,
    boot,
    generic_headers,
    github_headers,
    github_world,
    install,
    new_delivery,
    poll,
    push_body,
    shutdown,
)
from tests.support.github_server import app_key
from tests.support.orchestrator import kici_admin

pytestmark = pytest.mark.anyio

OTHER_ORG = "beta"


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[Independent]:
    """``kici-standalone`` with no source registered yet."""
    gh = github_world()
    try:
        w = boot(db_url, gh, tmp_path / "standalone", register=False)
        try:
            yield w
        finally:
            shutdown(w)
    finally:
        gh.close()


def _files(w: Independent) -> tuple[Path, Path]:
    key, secret = w.data_dir / "private-key.pem", w.data_dir / "webhook-secret"
    key.write_text(app_key().private_pem)
    secret.write_text(WEBHOOK_SECRET)
    return key, secret


async def _guide_add(w: Independent, *extra: str, check: bool = True) -> tuple[int, str, str]:
    key, secret = _files(w)
    out = await kici_admin(
        w.url,
        ADMIN_TOKEN,
        "source",
        "add",
        "github",
        "--name",
        "my-org",
        "--app-id",
        APP_ID,
        "--private-key",
        f"@{key}",
        "--webhook-secret",
        f"@{secret}",
        *extra,
        check=check,
    )
    return out.code, out.stdout, out.stderr


async def test_source_add_and_list_as_in_the_guide(world: Independent) -> None:
    w = world
    world.gh.fail("/app", 500, times=100)  # GitHub answering badly must not matter: it is not asked
    code, out, err = await _guide_add(w)
    assert code == 0, err
    assert out.splitlines()[0] == f"Source added: github:{APP_ID} (my-org)"
    assert w.gh.requests_for("/app") == []  # not contacted without --verify

    # Re-adding names the source that exists and how to change it.
    code, out, err = await _guide_add(w, check=False)
    [sid] = [str(r[0]) for r in await w.query("SELECT id FROM sources WHERE routing_key = %s", f"github:{APP_ID}")]
    assert code == 1 and out == ""
    assert err.strip() == (
        f'Error: source github:{APP_ID} ("my-org") already exists (id {sid}, routing key github:{APP_ID}); '
        f"change it with `kici-admin source update github:{APP_ID} ...` or remove it with "
        f"`kici-admin source remove github:{APP_ID}`"
    )
    assert "HTTP 409" not in err and WEBHOOK_SECRET not in err

    generic = {}
    for org in (ORG, OTHER_ORG):
        res = await w.admin(
            "source",
            "add",
            "generic",
            "--org",
            org,
            "--name",
            "deploys",
            "--secret",
            f"{org}-generic-secret",
            "--event-type-header",
            "x-event-type",
            "--json",
        )
        generic[org] = json.loads(res.stdout)["source"]["id"]
    again = await w.admin(
        "source", "add", "generic", "--org", ORG, "--name", "deploys", "--secret", "x" * 16, check=False
    )
    assert again.code == 1 and again.stderr.startswith(
        f'Error: source "deploys" in org {ORG} already exists (id {generic[ORG]}'
    )
    assert f"kici-admin source update-generic {generic[ORG]}" in again.stderr

    # The guide's `source list`: every source, right after adding them, without --org.
    listed = (await w.admin("source", "list")).stdout
    assert listed.startswith("GitHub sources:\n") and f"github:{APP_ID}" in listed
    assert generic[ORG] in listed and generic[OTHER_ORG] in listed and "No sources configured" not in listed
    assert "secret" in listed and f"{ORG}-generic-secret" not in listed and WEBHOOK_SECRET not in listed
    as_json = json.loads((await w.admin("source", "list", "--json")).stdout)
    assert sorted(s["id"] for s in as_json["generic"]) == sorted(generic.values())
    only = (await w.admin("source", "list", "--org", OTHER_ORG)).stdout
    assert generic[OTHER_ORG] in only and generic[ORG] not in only

    # source update-generic: a new secret (and method) is live at once on the webhook route.
    res = await w.admin(
        "source",
        "update-generic",
        generic[ORG],
        "--verification",
        "hmac_sha256",
        "--secret",
        "rotated-generic-secret-7777",
        "--rate-limit",
        "120",
    )
    assert res.stdout.startswith(f"Generic source updated: {generic[ORG]}\n") and "…7777" in res.stdout
    assert "rotated-generic-secret" not in res.stdout
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    path = f"/webhook/{ORG}/generic/deploys"
    old = await w.post(
        path, body, {**generic_headers(body, "g-1", secret=f"{ORG}-generic-secret"), "x-event-type": "deploy"}
    )
    new = await w.post(
        path, body, {**generic_headers(body, "g-2", secret="rotated-generic-secret-7777"), "x-event-type": "deploy"}
    )
    assert (old.status_code, new.status_code) == (401, 202), (old.text, new.text)
    rows = await w.query("SELECT rate_limit_rpm FROM generic_webhook_sources WHERE id = %s::uuid", generic[ORG])
    assert rows == [(120,)]
    missing = await w.admin("source", "update-generic", generic[ORG], check=False)
    assert missing.code == 1 and missing.stderr.strip() == "Error: no fields to update. Provide at least one option."
    assert w.gh.requests_for("/app") == []


async def test_source_add_github_verify_asks_github_and_fails_fast_naming_the_way_out(world: Independent) -> None:
    w = world
    code, out, err = await _guide_add(w, "--verify")
    assert code == 0, err
    assert out.splitlines()[:2] == [
        f"Source added: github:{APP_ID} (KiCI e2e)",
        f"  Verified with GitHub: the key belongs to App {APP_ID} (KiCI e2e).",
    ]
    assert len(w.gh.requests_for("/app")) == 1
    await w.admin("source", "remove", f"github:{APP_ID}", "--yes")

    w.gh.drop("/app")  # GitHub unreachable: one attempt, one line, and how to do without it
    code, out, err = await _guide_add(w, "--verify", check=False)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: HTTP 400: GitHub API validation failed: ")
    assert err.strip().endswith("(without --verify the App is registered without contacting GitHub)")
    assert len(w.gh.requests_for("/app")) == 2  # no retries
    assert await w.query("SELECT 1 FROM sources") == []
    code, out, err = await _guide_add(w)
    assert code == 0 and out.startswith(f"Source added: github:{APP_ID} (my-org)"), err
    assert len(w.gh.requests_for("/app")) == 2


async def test_event_log_show_without_org_runs_jobs_and_a_table_in_120_columns(world: Independent) -> None:
    w = world
    install(w.gh, "acme/app")
    code, _, err = await _guide_add(w)
    assert code == 0, err
    res = await w.admin(
        "source",
        "add",
        "generic",
        "--org",
        "platform-team",
        "--name",
        "deployments-from-the-release-pipeline",
        "--secret",
        "generic-secret-1234",
        "--event-type-header",
        "x-event-type",
        "--json",
    )
    generic_rk = json.loads(res.stdout)["source"]["routingKey"]

    # The guide's form: `event-log show <deliveryId>`, no --org.
    delivery, resp = await w.push("acme/app")
    assert resp.status_code == 202, resp.text
    row = await w.wait_status(delivery, "processed")
    shown = (await w.admin("event-log", "show", delivery)).stdout
    assert shown.startswith(f"Delivery: {delivery}\n  Org:           {ORG}\n")
    assert "Workflows (1 of 2 matched):" in shown and "  build: matched (trigger #0)" in shown

    # runs jobs <runId>: the run's two jobs, one queued for an agent, one waiting for its need.
    run_id = str(row["run_id"])
    jobs = (await w.admin("runs", "jobs", run_id)).stdout.splitlines()
    assert jobs[0].split() == ["JOB", "STATUS", "AGENT", "STARTED", "COMPLETED", "NEEDS", "DETAIL"]
    assert [line.split()[0] for line in jobs[2:]] == ["compile", "test"]
    assert "compile" in jobs[3]  # test needs compile
    doc = json.loads((await w.admin("runs", "jobs", run_id, "--include-steps", "--json")).stdout)
    assert [j["jobName"] for j in doc["jobs"]] == ["compile", "test"]
    assert [n["upstreamName"] for n in doc["jobs"][1]["needs"]] == ["compile"]
    assert doc["jobs"][0]["waitingReason"]  # no agent is connected: it says why
    unknown = await w.admin("runs", "jobs", str(uuid.uuid4()), check=False)
    assert unknown.code == 1 and "not found" in unknown.stderr

    # The same GitHub delivery id sent to a second org: show says so and lists both.
    body = push_body("acme/app")
    again = await w.post(f"/webhook/{OTHER_ORG}/github", body, github_headers(body, delivery))
    assert again.status_code == 202, again.text
    await poll(lambda: _row_in(w, OTHER_ORG, delivery), describe=lambda: w.proc.tail())
    ambiguous = await w.admin("event-log", "show", delivery, check=False)
    assert ambiguous.code == 1 and ambiguous.stderr.strip() == (
        f"Error: delivery {delivery} exists in 2 orgs ({ORG}, {OTHER_ORG}): choose one with --org <orgId>"
    )
    chosen = (await w.admin("event-log", "show", delivery, "--org", OTHER_ORG)).stdout
    assert f"  Org:           {OTHER_ORG}\n" in chosen
    assert (await w.admin("event-log", "replay", delivery, "--org", ORG)).code == 0
    assert (await w.admin("event-log", "show", new_delivery(), check=False)).stderr.strip() == (
        "Error: HTTP 404: Delivery not found"
    )

    # event-log list fits 120 columns with long generic ids; --json keeps every id whole.
    long_ids = []
    for i in range(3):
        raw = f"release-{i}-of-the-nightly-pipeline-{uuid.uuid4()}"
        payload = json.dumps({"n": i}).encode()
        resp = await w.post(
            "/webhook/platform-team/generic/deployments-from-the-release-pipeline",
            payload,
            {
                **generic_headers(payload, raw, secret="generic-secret-1234"),
                "x-event-type": "deployment_status_changed",
            },
        )
        assert resp.status_code == 202, resp.text
        long_ids.append(resp.json()["deliveryId"])
    assert all(d.startswith(generic_rk + ":") and len(d) > 100 for d in long_ids)
    table = (await w.admin("event-log", "list")).stdout
    widest = max(table.splitlines(), key=len)
    assert len(widest) <= 120, f"{len(widest)} columns:\n{table}"
    assert delivery in table  # a GitHub delivery GUID stays whole
    assert not any(d in table for d in long_ids) and "…" in table
    listed = json.loads((await w.admin("event-log", "list", "--json")).stdout)
    assert set(long_ids) <= {d["deliveryId"] for d in listed["deliveries"]}
    wide = (await w.admin("event-log", "list", "--wide")).stdout
    assert all(d in wide for d in long_ids)
    # and a shortened id's head and tail still find the delivery
    filtered = json.loads((await w.admin("event-log", "list", "--delivery-id", long_ids[0][-20:], "--json")).stdout)
    assert [d["deliveryId"] for d in filtered["deliveries"]] == [long_ids[0]]


async def _row_in(w: Independent, org: str, delivery: str) -> bool | None:
    rows = await w.query("SELECT 1 FROM event_log WHERE org_id = %s AND delivery_id = %s", org, delivery)
    return True if rows else None


async def test_readiness_and_migration_status_read_the_real_database(world: Independent) -> None:
    w = world
    async with httpx.AsyncClient(base_url=w.url, timeout=30) as http:
        ready = await http.get("/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "checks": {"database": True}})
    shipped = [m.name for m in migrate.known_migrations()]
    out = json.loads((await w.admin("db", "migrate", "--status", "--json")).stdout)
    assert [m["name"] for m in out["migrations"]] == shipped
    assert {m["status"] for m in out["migrations"]} == {"applied"}
    assert all(m["appliedAt"].endswith("Z") for m in out["migrations"])
    table = (await w.admin("db", "migrate", "--status")).stdout
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines() if line.startswith("0")}
    assert rows == dict.fromkeys(shipped, "applied"), table
