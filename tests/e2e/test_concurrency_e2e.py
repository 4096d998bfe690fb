"""Workflow concurrency groups across two orchestrator processes sharing one database, with agents speaking the
protocol as upstream's agent does (they compute the group and send ``job.concurrency.report``).

``cancelInProgress: false``: the first run to report takes the group, the second is told to ``wait`` (and
``kici-admin runs show`` names the group), then proceeds through the other process when the first run ends.
``cancelInProgress: true``: the second run supersedes the first, whose job is cancelled on its agent.
A slot left held by a run that ended (a process that stopped between the two commits) is released by the
dispatch sweep, and the run waiting behind it proceeds.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kici_adapters.postgres import singletons
from tests.e2e.test_agents_e2e import Harness, _git, harness
from tests.support import pg as _pg
from tests.support.agents import RawAgent
from tests.support.orchestrator import kici_admin

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

ADMIN = "kat-admin-groups-" + "5" * 20
ENV = {"KICI_SECRET_KEY": "ef" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": ADMIN}


def make_repo(root: Path, concurrency: dict[str, Any]) -> tuple[Path, str]:
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    src = {"file": ".kici/workflows/deploy.ts", "export": "#default"}
    lock = {
        "schemaVersion": 29,
        "source": src,
        "contentHash": "h",
        "workflows": [
            {
                "name": "deploy",
                "source": src,
                "contentHash": "d",
                "compileSchemaVersion": 5,
                "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
                "jobs": [
                    {
                        "_type": "static",
                        "name": "ship",
                        "runsOn": [{"kind": "exact", "value": "conc"}],
                        "needs": [],
                        "steps": [{"name": "ship", "hasOutputs": False}],
                    }
                ],
                "concurrency": concurrency,
            }
        ],
    }
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    _git(repo.parent, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    return repo, _git(repo, "rev-parse", "HEAD")


async def started(agent: RawAgent) -> dict[str, Any]:
    """The agent's next dispatch, acknowledged and running; checks the workflow's settings travel with it."""
    dispatch = await agent.expect("job.dispatch")
    assert dispatch["jobConfig"]["workflowConcurrency"]["hasGroup"] is True
    await agent.ack(dispatch)
    await agent.status(dispatch, "running")
    return dispatch


async def report(agent: RawAgent, dispatch: dict[str, Any], group: str) -> dict[str, Any]:
    message_id = str(uuid.uuid4())
    await agent.send(
        {
            "type": "job.concurrency.report",
            "messageId": message_id,
            "runId": dispatch["runId"],
            "jobId": dispatch["jobId"],
            "group": group,
        }
    )
    ack = await agent.expect("job.concurrency.ack")
    assert ack["requestId"] == message_id
    return ack


async def run_status(h: Harness, run_id: str, *statuses: str) -> None:
    async def done() -> bool:
        rows = await h.query("SELECT status FROM execution_runs WHERE run_id::text = %(r)s", r=run_id)
        return bool(rows) and rows[0]["status"] in statuses

    await h.wait_for(done, what=f"run {run_id} {statuses}")


async def test_a_group_queues_the_second_run_across_processes_and_lets_it_in_when_the_first_ends(
    db_url: str, tmp_path: Path
) -> None:
    repo, sha = make_repo(tmp_path, {"hasGroup": True, "cancelInProgress": False, "max": 1})
    async with (
        harness(db_url, tmp_path / "a", KICI_CLUSTER_INSTANCE_ID="proc-a", **ENV) as (one, _),
        harness(db_url, tmp_path / "b", KICI_CLUSTER_INSTANCE_ID="proc-b", **ENV) as (two, _),
    ):
        await one.add_local_source(repo)
        first_agent = await RawAgent.join(one.port, "agent-a", ["conc"])
        second_agent = await RawAgent.join(two.port, "agent-b", ["conc"])
        await one.push(repo, sha)
        await one.push(repo, sha)
        first, second = await started(first_agent), await started(second_agent)
        assert first["runId"] != second["runId"]

        assert (await report(first_agent, first, "prod"))["action"] == "proceed"
        waiting = await report(second_agent, second, "prod")
        assert (waiting["action"], waiting["reason"]) == ("wait", "Queued in concurrency group 'prod'")
        shown = await kici_admin(two.base, ADMIN, "runs", "show", second["runId"])
        assert f"Queued in concurrency group 'prod': held by run {first['runId']}" in shown.stdout, shown.stdout

        await first_agent.status(first, "success")  # the first run ends on process A ...
        woken = await second_agent.expect("job.concurrency.ack")  # ... and process B lets the second in
        assert (woken["action"], woken["runId"], woken["jobId"]) == ("proceed", second["runId"], second["jobId"])
        assert woken["requestId"] != waiting["requestId"]
        await second_agent.status(second, "success")
        await run_status(one, first["runId"], "success")
        await run_status(one, second["runId"], "success")

        # the slot is released just after the run's end is committed (its own transaction): wait for it
        async def slots() -> list[str]:
            rows = await one.query("SELECT status FROM concurrency_slots ORDER BY id")
            return [s["status"] for s in rows]

        async def both_released() -> bool:
            return await slots() == ["released", "released"]

        await one.wait_for(both_released, what="both runs' group slots released", seen=slots)
        await first_agent.close()
        await second_agent.close()


async def test_cancel_in_progress_supersedes_the_run_holding_the_group(db_url: str, tmp_path: Path) -> None:
    repo, sha = make_repo(tmp_path, {"hasGroup": True})  # cancelInProgress defaults to true
    async with (
        harness(db_url, tmp_path / "a", KICI_CLUSTER_INSTANCE_ID="proc-a", **ENV) as (one, _),
        harness(db_url, tmp_path / "b", KICI_CLUSTER_INSTANCE_ID="proc-b", **ENV) as (two, _),
    ):
        await one.add_local_source(repo)
        old_agent = await RawAgent.join(one.port, "agent-a", ["conc"])
        await one.push(repo, sha)
        old = await started(old_agent)
        assert (await report(old_agent, old, "preview"))["action"] == "proceed"

        new_agent = await RawAgent.join(two.port, "agent-b", ["conc"])
        await one.push(repo, sha)
        new = await started(new_agent)
        assert (await report(new_agent, new, "preview"))["action"] == "proceed"
        cancel = await old_agent.expect("job.cancel")  # sent by process A for process B's decision
        assert (cancel["jobId"], cancel["reason"]) == (old["jobId"], "Superseded by run in concurrency group 'preview'")
        await old_agent.status(old, "cancelled", {"error": f"Cancelled: {cancel['reason']}"})
        await new_agent.status(new, "success")
        await run_status(two, old["runId"], "cancelled")
        await run_status(two, new["runId"], "success")
        await old_agent.close()
        await new_agent.close()


async def test_the_sweep_releases_a_slot_an_ended_run_still_holds_and_the_waiting_run_proceeds(
    db_url: str, tmp_path: Path
) -> None:
    repo, sha = make_repo(tmp_path, {"hasGroup": True, "cancelInProgress": False, "max": 1})
    async with (
        harness(db_url, tmp_path / "a", KICI_DISPATCH_SWEEP_INTERVAL_MS="200", **ENV) as (one, _),
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as sweeps,
    ):
        # Hold the sweep duty's lock while the crash's leftovers are set up, so that no sweep runs before run B
        # waits behind them; the orchestrator's sweep skips its pass while another holder has the duty.
        await sweeps.execute("SELECT pg_advisory_lock(%s)", (singletons.lock_key("dispatch-sweeps"),))
        await one.add_local_source(repo)
        agent = await RawAgent.join(one.port, "agent-a", ["conc"])
        await one.push(repo, sha)
        first = await started(agent)
        assert (await report(agent, first, "prod"))["action"] == "proceed"
        await agent.status(first, "success")
        await run_status(one, first["runId"], "success")

        async def slots() -> list[dict[str, Any]]:
            return await one.query("SELECT run_id::text AS run, status FROM concurrency_slots ORDER BY id")

        async def released() -> bool:
            return [s["status"] for s in await slots()] == ["released"]

        await one.wait_for(released, what="run A's group slot released", seen=slots)
        # What a process that stopped after committing the run's end, before releasing its slot, leaves behind:
        await one.query(
            "UPDATE concurrency_slots SET status = 'holding' WHERE run_id::text = %(r)s RETURNING id", r=first["runId"]
        )

        await one.push(repo, sha)
        second = await started(agent)
        waiting = await report(agent, second, "prod")
        assert (waiting["action"], waiting["reason"]) == ("wait", "Queued in concurrency group 'prod'")

        await sweeps.execute("SELECT pg_advisory_unlock(%s)", (singletons.lock_key("dispatch-sweeps"),))
        woken = await agent.expect("job.concurrency.ack")  # the next sweep frees A's slot and lets B in
        assert (woken["action"], woken["runId"], woken["jobId"]) == ("proceed", second["runId"], second["jobId"])
        await agent.status(second, "success")
        await run_status(one, second["runId"], "success")

        async def both_released() -> bool:
            return [s["status"] for s in await slots()] == ["released", "released"]

        await one.wait_for(both_released, what="both runs' group slots released", seen=slots)
        await agent.close()
