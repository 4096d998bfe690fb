"""Schedules and manual runs end to end: the real orchestrator app (uvicorn, PostgreSQL), a real ``kici-agent``, a
``local`` source whose repository is a git repo, and ``kici-admin``.

A push to the default branch registers the lock file's workflows; the schedule loop is driven by the test with
the times it acts at (never the wall clock): a due schedule fires once (a second tick at the same time fires
nothing), its run reaches the agent with the schedule event and the trigger's default inputs, and a schedule
missed for hours fires once. ``kici-admin runs dispatch`` runs a workflow by hand with typed inputs; bad inputs
are refused with every problem named by its path.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_agents_e2e import Harness, _git, harness
from tests.support import pg as _pg
from tests.support.orchestrator import kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

ADMIN = "kat-admin-schedules-" + "7" * 20
ENV = {"KICI_SECRET_KEY": "ab" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": ADMIN}
SHOW_EVENT = {"name": "show", "run": 'echo "event=$KICI_EVENT_TYPE"; cat "$KICI_EVENT_PATH"'}
NIGHTLY = {
    "name": "nightly",
    "source": {"file": ".kici/workflows/nightly.ts", "export": "#default"},
    "contentHash": "n",
    "compileSchemaVersion": 5,
    "triggers": [
        {
            "_type": "schedule",
            "cronExpression": "*/15 * * * *",
            "timezone": "Europe/Berlin",
            "description": "sweep",
            "inputs": {"depth": {"type": "integer", "optional": False, "nullable": False, "default": 3}},
        }
    ],
    "jobs": [
        {
            "_type": "static",
            "name": "sweep",
            "runsOn": [{"kind": "exact", "value": "e2e"}],
            "needs": [],
            "steps": [SHOW_EVENT],
        }
    ],
}
DEPLOY = {
    "name": "deploy",
    "source": {"file": ".kici/workflows/deploy.ts", "export": "#default"},
    "contentHash": "d",
    "compileSchemaVersion": 5,
    "triggers": [
        {
            "_type": "dispatch",
            "types": ["deploy"],
            "inputs": {
                "env": {"type": "enum", "values": ["staging", "prod"], "optional": False, "nullable": False},
                "count": {"type": "integer", "min": 1, "max": 5, "optional": True, "nullable": False},
                "dry": {"type": "boolean", "optional": False, "nullable": False, "default": False},
            },
        }
    ],
    "jobs": [
        {
            "_type": "static",
            "name": "ship",
            "runsOn": [{"kind": "exact", "value": "e2e"}],
            "needs": [],
            "steps": [SHOW_EVENT],
        }
    ],
}


def make_repo(root: Path) -> tuple[Path, str]:
    """A repo on ``main`` whose lock file (upstream format) has a scheduled and a dispatch-only workflow."""
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    lock = {
        "schemaVersion": 29,
        "source": {"file": ".kici/workflows/nightly.ts", "export": "#default"},
        "contentHash": "h",
        "workflows": [NIGHTLY, DEPLOY],
    }
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    _git(repo.parent, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    return repo, _git(repo, "rev-parse", "HEAD")


async def registered(h: Harness, repo: Path, sha: str) -> None:
    """Push ``sha`` to main and wait until the push is processed (its workflows are then registered)."""
    await h.push(repo, sha)

    async def processed() -> bool:
        rows = await h.query("SELECT status FROM event_log WHERE event = 'push'")
        return bool(rows) and rows[0]["status"] == "processed"

    await h.wait_for(processed, what="push processed")


async def schedules(h: Harness) -> list[dict[str, Any]]:
    out = await kici_admin(h.base, ADMIN, "schedules", "list", "--json")
    found: list[dict[str, Any]] = json.loads(out.stdout)["schedules"]
    return found


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def finished_run(h: Harness, run_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal row
        rows = await h.query("SELECT * FROM execution_runs WHERE run_id::text = %(id)s", id=run_id)
        row = rows[0] if rows else {}
        return row.get("status") in ("success", "failed", "cancelled")

    try:
        await h.wait_for(done, what=f"run {run_id} finished", limit=90)
    except TimeoutError:
        raise AssertionError(f"run {run_id} did not finish: {row} {await h.query('SELECT * FROM event_log')}") from None
    return row


async def job_log(h: Harness, run_id: str) -> str:
    rows = await h.query(
        "SELECT content FROM log_chunks WHERE run_id::text = %(id)s AND step_index = 0 ORDER BY id", id=run_id
    )
    return "\n".join(r["content"] or "" for r in rows)


async def test_a_due_schedule_fires_once_runs_on_the_agent_and_a_missed_one_runs_once(
    db_url: str, tmp_path: Path
) -> None:
    repo, sha = make_repo(tmp_path)
    async with harness(db_url, tmp_path, **ENV) as (h, _):
        assert h.orch is not None and h.orch.scheduler is not None
        loop = h.orch.scheduler
        await h.add_local_source(repo)
        await h.start_agent("sched-1", "e2e")
        await registered(h, repo, sha)
        [listed] = await schedules(h)
        assert (listed["workflow"], listed["cronExpression"], listed["timezone"]) == (
            "nightly",
            "*/15 * * * *",
            "Europe/Berlin",
        )
        assert listed["lastFireAt"] is None and listed["error"] is None
        due = _at(listed["nextFireAt"])
        assert due.minute % 15 == 0 and due.second == 0

        assert await loop.tick(due - timedelta(seconds=1)) == []  # not yet due
        fired = await loop.tick(due)
        assert fired == [f"schedule:{listed['id']}:{int(due.timestamp())}"]
        assert await loop.tick(due) == []  # the same moment again fires nothing
        [duty] = await h.query("SELECT instance_id FROM cluster_duties WHERE duty = 'schedules'")
        assert duty["instance_id"]  # the firing process is named in /cluster/health and `kici-admin cluster status`

        rows = await h.query(
            "SELECT source, event, status, matched_count, run_id::text AS run_id, decision_trace"
            " FROM event_log WHERE delivery_id = %(d)s",
            d=fired[0],
        )
        run = await finished_run(h, (await poll_run(h, fired[0]))["run_id"])
        assert run["status"] == "success" and run["sha"] == sha and run["ref"] == "main"
        [entry] = await h.query(
            "SELECT source, event, status, matched_count, decision_trace FROM event_log WHERE delivery_id = %(d)s",
            d=fired[0],
        )
        assert (entry["source"], entry["event"], entry["status"], entry["matched_count"]) == (
            "internal",
            "schedule",
            "processed",
            1,
        )
        assert entry["decision_trace"]["matchedWorkflows"] == ["nightly"]
        log = await job_log(h, str(run["run_id"]))
        assert "event=schedule" in log
        event = json.loads(log[log.index("{") :])
        assert event["payload"]["cronExpression"] == "*/15 * * * *"
        assert event["payload"]["scheduledAt"] == listed["nextFireAt"]
        assert event["payload"]["inputs"] == {"depth": 3}
        assert rows  # recorded as soon as the tick accepted it

        [after] = await schedules(h)
        assert after["lastFireAt"] == listed["nextFireAt"]
        assert _at(after["nextFireAt"]) == due + timedelta(minutes=15)

        # Down for two hours: eight fires were missed; one runs, carrying the time it was due.
        later = due + timedelta(hours=2, seconds=5)
        missed = await loop.tick(later)
        assert missed == [f"schedule:{listed['id']}:{int((due + timedelta(minutes=15)).timestamp())}"]
        [caught_up] = await schedules(h)
        assert _at(caught_up["nextFireAt"]) == due + timedelta(hours=2, minutes=15)
        second = await finished_run(h, (await poll_run(h, missed[0]))["run_id"])
        assert second["status"] == "success"
        assert len(await h.query("SELECT 1 FROM execution_runs")) == 2


async def poll_run(h: Harness, delivery: str) -> dict[str, Any]:
    """The event-log row of ``delivery`` once processed with a run."""
    found: dict[str, Any] = {}

    async def ready() -> bool:
        nonlocal found
        rows = await h.query(
            "SELECT status, run_id::text AS run_id, error_message FROM event_log WHERE delivery_id = %(d)s", d=delivery
        )
        found = rows[0] if rows else {}
        return found.get("run_id") is not None

    try:
        await h.wait_for(ready, what=f"delivery {delivery} processed into a run", limit=60)
    except TimeoutError:
        raise AssertionError(f"no run for {delivery}: {found}") from None
    return found


async def test_manual_runs_take_typed_inputs_and_bad_inputs_are_refused_by_path(db_url: str, tmp_path: Path) -> None:
    repo, sha = make_repo(tmp_path)
    async with harness(db_url, tmp_path, **ENV) as (h, _):
        await h.add_local_source(repo)
        await h.start_agent("manual-1", "e2e")
        await registered(h, repo, sha)
        base = ["runs", "dispatch", "--source", "repo", "--repo", "acme/repo", "--workflow", "deploy", "--ref", "main"]

        bad = await kici_admin(
            h.base, ADMIN, *base, "--input", "env=qa", "--input", "count=9", "--input", "colour=red", check=False
        )
        assert bad.code != 0
        assert "HTTP 400" in bad.stderr
        for part in (
            "inputs.env must be one of: staging, prod",
            "inputs.count value must be at most 5",
            "inputs.colour unknown input",
        ):
            assert part in bad.stderr, bad.stderr
        missing = await kici_admin(h.base, ADMIN, *base, check=False)
        assert missing.code != 0 and "inputs.env required" in missing.stderr, missing.stderr
        wrong = await kici_admin(h.base, ADMIN, *base[:-4], "--workflow", "nightly", "--ref", "main", check=False)
        assert wrong.code != 0 and 'workflow "nightly" has no dispatch trigger' in wrong.stderr, wrong.stderr
        assert await h.query("SELECT 1 FROM event_log WHERE event = 'dispatch'") == []  # nothing accepted

        ok = await kici_admin(h.base, ADMIN, *base, "--input", "env=prod", "--input", "count=2", "--json")
        requested = json.loads(ok.stdout)
        assert requested["inputs"] == {"env": "prod", "count": 2, "dry": False}
        assert requested["type"] == "deploy"
        async with httpx.AsyncClient(base_url=h.base, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            api = await http.post(
                "/api/v1/admin/runs/dispatch",
                json={
                    "source": "repo",
                    "repo": "acme/repo",
                    "workflow": "deploy",
                    "ref": "main",
                    "inputs": {"env": "staging", "dry": True},
                },
            )
            assert api.status_code == 202, api.text

        for answer, expected in (
            (requested, {"env": "prod", "count": 2, "dry": False}),
            (api.json(), {"env": "staging", "dry": True}),
        ):
            run = await finished_run(h, answer["runId"])
            assert run["status"] == "success" and run["workflow_name"] == "deploy" and run["ref"] == "main"
            log = await job_log(h, answer["runId"])
            event = json.loads(log[log.index("{") :])
            assert (event["type"], event["action"], event["payload"]["inputs"]) == ("dispatch", "deploy", expected)
            [entry] = await h.query(
                "SELECT source, status, matched_count FROM event_log WHERE delivery_id = %(d)s", d=answer["deliveryId"]
            )
            assert (entry["source"], entry["status"], entry["matched_count"]) == ("internal", "processed", 1)


async def pushes_processed(h: Harness, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` pushes are recorded and processed; their event-log rows, oldest first."""
    rows: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal rows
        rows = await h.query(
            "SELECT delivery_id, status, ref FROM event_log WHERE event = 'push' ORDER BY received_at, id"
        )
        return len(rows) == count and all(r["status"] == "processed" for r in rows)

    await h.wait_for(done, what=f"{count} pushes processed", seen=lambda: _rows(rows))
    return rows


async def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows


async def test_a_push_of_a_registered_commit_leaves_registrations_alone_and_a_changed_lock_file_replaces_them(
    db_url: str, tmp_path: Path
) -> None:
    repo, sha = make_repo(tmp_path)
    registered_rows = (
        "SELECT r.workflow_name, r.sha, r.delivery_id, r.updated_at, s.cron_expression,"
        " s.next_fire_at, s.updated_at AS schedule_updated_at FROM workflow_registrations r"
        " LEFT JOIN workflow_schedules s ON s.registration_id = r.id ORDER BY r.workflow_name"
    )
    async with harness(db_url, tmp_path, **ENV) as (h, _):
        await h.add_local_source(repo)
        await h.push(repo, sha)
        [first] = await pushes_processed(h, 1)
        before = await h.query(registered_rows)
        assert [(r["workflow_name"], r["sha"], r["delivery_id"], r["cron_expression"]) for r in before] == [
            ("deploy", sha, first["delivery_id"], None),
            ("nightly", sha, first["delivery_id"], "*/15 * * * *"),
        ]

        # Another delivery of the same commit (GitHub redelivers, a tool pushes again): nothing to re-register.
        await h.push(repo, sha)
        await pushes_processed(h, 2)
        assert await h.query(registered_rows) == before

        # The lock file changes: the next push registers the new schedule.
        lock = json.loads((repo / ".kici" / "kici.lock.json").read_text())
        lock["workflows"][0]["triggers"][0]["cronExpression"] = "0 * * * *"
        (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
        _git(repo, "commit", "-q", "-am", "hourly")
        changed = _git(repo, "rev-parse", "HEAD")
        await h.push(repo, changed)
        third = (await pushes_processed(h, 3))[2]
        after = await h.query(registered_rows)
        assert [(r["workflow_name"], r["sha"], r["delivery_id"], r["cron_expression"]) for r in after] == [
            ("deploy", changed, third["delivery_id"], None),
            ("nightly", changed, third["delivery_id"], "0 * * * *"),
        ]
        assert after[1]["next_fire_at"].minute == 0  # computed for the new expression
