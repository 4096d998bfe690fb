"""The dispatch driver (AgentHub) over the in-memory queue, run store and concurrency groups: no database.

Agents are real :class:`~kici_adapters.agents.endpoint.AgentConnection` objects over a recording socket; their
messages go through the wire validation the ``/ws`` endpoint applies before handing them to the hub.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket

from kici_adapters.agents import wire
from kici_adapters.agents.endpoint import AgentConnection
from kici_core import dispatch_policy, routing
from kici_core.dispatch_effects import REASON_RECOVERY_EXPIRED, DispatcherConfig
from kici_core.dispatch_records import CancelRun, JobsQueued
from kici_core.run_records import NewJob, NewRun
from kici_core.testing import fakes
from kici_runtime.orchestrator.dispatcher import AgentHub
from tests.support.new_runs import new_job, new_run

pytestmark = pytest.mark.anyio

LINUX = ({"kind": "exact", "value": "linux"},)


class RecordingSocket:
    """The part of a WebSocket an AgentConnection uses: what was sent, and how it was closed."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]


def job(name: str, *, needs: Sequence[str] = ()) -> NewJob:
    return new_job(name, needs=needs, runs_on=LINUX, job_config={"name": name, "steps": [{"run": f"make {name}"}]})


def run_of(*jobs: NewJob) -> NewRun:
    return new_run(
        *jobs,
        provider="local",
        routing_key="generic:acme:src",
        repo_url="file:///srv/git/acme/app.git",
        sha="c" * 40,
        trigger_decision={"matched": True},
    )


class Rig:
    """One hub with its fakes and a clock that moves only when told."""

    def __init__(self, *, max_attempts: int = 5) -> None:
        self.clock = fakes.FakeClock()
        self.tables = fakes.FakeDispatchTables(self.clock.now)
        self.queue = fakes.FakeDispatchQueue(self.tables)
        self.runs = fakes.FakeRunStore(self.tables, self.queue)
        self.hub = AgentHub(
            queue=self.queue,
            runs=self.runs,
            concurrency=fakes.FakeConcurrencyGroups(self.tables),
            config=DispatcherConfig(max_attempts=max_attempts),
            instance_id="i1",
            clock=self.tables.now,
        )

    async def connect(
        self, agent_id: str, *, in_flight: Sequence[str] = (), run_id: str = ""
    ) -> tuple[AgentConnection, RecordingSocket]:
        socket = RecordingSocket()
        conn = AgentConnection(cast(WebSocket, socket), str(uuid.uuid4()))
        msg = wire.AgentRegister.model_validate(
            {
                "type": "agent.register",
                "messageId": str(uuid.uuid4()),
                "agentId": agent_id,
                "labels": ["linux"],
                "platform": "linux",
                "arch": "x64",
                "version": "1.0.0",
                "maxConcurrency": 1,
                "inFlightJobs": [{"jobId": j, "runId": run_id} for j in in_flight],
            }
        )
        conn.agent_id, conn.wire_labels = agent_id, ["linux"]
        await self.hub.register(
            conn, msg, routing.AgentLabels(labels=frozenset({"linux"}), platform="linux", arch="x64")
        )
        conn.registered = True
        return conn, socket

    async def say(self, conn: AgentConnection, kind: str, job_id: str, run_id: str, **fields: Any) -> None:
        msg: dict[str, Any] = {
            "type": kind,
            "messageId": str(uuid.uuid4()),
            "runId": run_id,
            "jobId": job_id,
            "timestamp": 1_767_225_600_000,
            **fields,
        }
        await self.hub.handle(conn, msg, wire.validate(msg))


async def test_a_queued_job_is_dispatched_to_a_registered_agent() -> None:
    rig = Rig()
    build = job("build")
    run = run_of(build)
    rig.tables.add_run(run)
    _conn, socket = await rig.connect("agent-1")
    await rig.hub.refresh()
    [ack] = socket.of_type("register.ack")
    assert (ack["agentId"], ack["labels"], ack["scalerManaged"]) == ("agent-1", ["linux"], False)
    [dispatch] = socket.of_type("job.dispatch")
    assert (dispatch["jobId"], dispatch["runId"], dispatch["sha"]) == (build.job_id, run.run_id, "c" * 40)
    assert dispatch["jobConfig"]["steps"] == [{"run": "make build"}]
    row = rig.tables.queue[build.job_id]
    assert (row.status, row.agent_id) == ("dispatched", "agent-1")
    assert rig.tables.agents["agent-1"].instance == "i1"
    assert rig.hub.sent_dispatches == 1


async def test_ack_and_reports_update_the_run_store_and_release_the_next_job() -> None:
    rig = Rig()
    build, test = job("build"), job("test", needs=["build"])
    run = run_of(build, test)
    rig.tables.add_run(run)
    conn, socket = await rig.connect("agent-1")
    await rig.hub.refresh()
    await rig.say(conn, "job.ack", build.job_id, run.run_id)
    await rig.hub.flush_acks()
    assert rig.tables.queue[build.job_id].ack_deadline is None
    await rig.say(conn, "job.status", build.job_id, run.run_id, state="running")
    assert (rig.tables.jobs[build.job_id].status, rig.tables.runs[run.run_id].status) == ("running", "running")
    await rig.say(conn, "step.status", build.job_id, run.run_id, stepIndex=0, stepName="make", state="success")
    await rig.hub.handle(
        conn,
        {
            "type": "log.chunk",
            "messageId": "l1",
            "runId": run.run_id,
            "jobId": build.job_id,
            "stepIndex": 0,
            "lines": ["ok"],
            "timestamp": 1,
        },
        None,
    )
    assert rig.runs.steps == {(build.job_id, 0): "success"}
    assert rig.runs.logs == [(build.job_id, 0, ("ok",))]
    await rig.say(
        conn, "job.status", build.job_id, run.run_id, state="success", data={"outputs": {"artifact": "app.tar"}}
    )
    assert (rig.tables.jobs[build.job_id].status, rig.tables.queue[build.job_id].status) == ("success", "completed")
    dispatches = socket.of_type("job.dispatch")
    assert [d["jobId"] for d in dispatches] == [build.job_id, test.job_id]  # the freed slot took the next job
    assert dispatches[1]["upstreamJobOutputs"] == {"build": {"artifact": "app.tar"}}
    assert dispatches[1]["upstreamJobStatuses"] == {"build": "success"}
    await rig.say(conn, "job.ack", test.job_id, run.run_id)
    await rig.say(conn, "job.status", test.job_id, run.run_id, state="failed", data={"error": "1 test failed"})
    assert rig.tables.runs[run.run_id].status == "failed"
    assert rig.tables.jobs[test.job_id].error == "1 test failed"


async def test_an_agent_disconnect_requeues_an_unacknowledged_job_for_another_agent() -> None:
    rig = Rig()
    build = job("build")
    run = run_of(build)
    rig.tables.add_run(run)
    first, _ = await rig.connect("agent-1")
    await rig.hub.refresh()
    await rig.hub.gone(first)
    row = rig.tables.queue[build.job_id]
    assert (row.status, row.attempts) == ("pending", 1)
    assert JobsQueued((build.job_id,)) in rig.queue.announced
    assert rig.tables.agents["agent-1"].instance is None
    _second, socket = await rig.connect("agent-2")
    assert [d["jobId"] for d in socket.of_type("job.dispatch")] == [build.job_id]
    assert rig.tables.queue[build.job_id].agent_id == "agent-2"


async def test_a_started_job_waits_for_its_agent_to_come_back_and_is_reclaimed() -> None:
    rig = Rig()
    build = job("build")
    run = run_of(build)
    rig.tables.add_run(run)
    first, _ = await rig.connect("agent-1")
    await rig.hub.refresh()
    await rig.say(first, "job.ack", build.job_id, run.run_id)
    await rig.say(first, "job.status", build.job_id, run.run_id, state="running")
    await rig.hub.gone(first)
    assert (rig.tables.queue[build.job_id].status, rig.tables.jobs[build.job_id].status) == ("recovering", "recovering")
    again, socket = await rig.connect("agent-1", in_flight=[build.job_id], run_id=run.run_id)
    assert (rig.tables.queue[build.job_id].status, rig.tables.jobs[build.job_id].status) == ("dispatched", "running")
    assert socket.of_type("job.dispatch") == []  # reclaimed, not dispatched again
    await rig.say(again, "job.status", build.job_id, run.run_id, state="success")
    assert rig.tables.runs[run.run_id].status == "success"


async def test_messages_about_another_agents_job_are_dropped_and_five_close_the_socket() -> None:
    rig = Rig()
    build = job("build")
    run = run_of(build)
    rig.tables.add_run(run)
    await rig.connect("agent-1")
    await rig.hub.refresh()
    rogue, socket = await rig.connect("rogue")
    for n in range(dispatch_policy.VIOLATION_LIMIT):
        assert socket.closed is None, f"closed after {n} violations"
        await rig.say(rogue, "job.status", build.job_id, run.run_id, state="failed")
    assert rig.tables.jobs[build.job_id].status == "pending"  # never recorded
    assert len(rogue.violations) == dispatch_policy.VIOLATION_LIMIT
    assert socket.closed == (1001, f"Ownership violations: job {build.job_id} is not assigned to this agent")


async def test_the_sweep_requeues_or_fails_rows_no_live_process_handles() -> None:
    rig = Rig(max_attempts=2)
    a, b, c = job("a"), job("b"), job("c")
    run = run_of(a, b, c)
    rig.tables.add_run(run)
    past = rig.tables.now() - 60
    for j in (a, b, c):  # dispatched by a process that died: this hub's core does not know them
        await rig.queue.claim_many([(j.job_id, "gone", past)])
    rig.tables.queue[b.job_id].attempts = 1
    await rig.queue.mark_recovering(c.job_id, agent_id="gone", deadline=past)
    await rig.hub.sweep_once()
    assert (rig.tables.queue[a.job_id].status, rig.tables.queue[a.job_id].attempts) == ("pending", 1)
    assert (rig.tables.jobs[b.job_id].status, rig.tables.jobs[b.job_id].error) == (
        "failed",
        "Job failed: re-dispatch attempts exhausted after 2 attempts (dispatch ack deadline sweep)",
    )
    assert (rig.tables.jobs[c.job_id].status, rig.tables.jobs[c.job_id].error) == ("failed", REASON_RECOVERY_EXPIRED)
    assert rig.queue.duties == [("dispatch-sweeps", "i1")]


async def test_the_sweep_releases_the_slot_of_a_run_that_ended_without_releasing_it() -> None:
    rig = Rig()
    group = {"workflowConcurrency": {"hasGroup": True, "cancelInProgress": False, "max": 1}}
    jobs = [dataclasses.replace(job("deploy"), job_config={"name": "deploy", **group}) for _ in range(2)]
    first, second = run_of(jobs[0]), run_of(jobs[1])
    rig.tables.add_run(first)
    rig.tables.add_run(second)
    one, _ = await rig.connect("agent-1")
    two, socket = await rig.connect("agent-2")
    await rig.hub.refresh()
    for conn, run in ((one, first), (two, second)):
        await rig.say(conn, "job.ack", run.jobs[0].job_id, run.run_id)
        await rig.say(conn, "job.concurrency.report", run.jobs[0].job_id, run.run_id, group="prod")
    [waiting] = socket.of_type("job.concurrency.ack")
    assert waiting["action"] == "wait"
    # the first run's end is committed by a process that stops before releasing its slot
    result = await rig.runs.finish_job(first.jobs[0].job_id, "success")
    assert result.run_status == "success"
    assert [s.status for s in rig.tables.slots] == ["holding", "waiting"]

    await rig.hub.sweep_once()
    assert [s.status for s in rig.tables.slots] == ["released", "holding"]
    [_, proceed] = socket.of_type("job.concurrency.ack")
    assert (proceed["action"], proceed["jobId"], proceed["runId"]) == ("proceed", jobs[1].job_id, second.run_id)
    await rig.hub.sweep_once()  # nothing left to repair: no second proceed
    assert len(socket.of_type("job.concurrency.ack")) == 2


async def test_cancelling_a_run_stops_local_jobs_and_tells_other_processes_about_theirs() -> None:
    rig = Rig()
    here, there = job("here"), job("there")
    run = run_of(here, there)
    rig.tables.add_run(run)
    await rig.queue.claim_many([(there.job_id, "remote-agent", rig.tables.now() + 30)])
    conn, socket = await rig.connect("agent-1")
    await rig.hub.refresh()
    await rig.say(conn, "job.ack", here.job_id, run.run_id)
    result = await rig.hub.cancel_run(run.run_id, cancelled_by="admin")
    assert result == {"status": "cancelling", "notified": 1}
    [cancel] = socket.of_type("job.cancel")
    assert (cancel["jobId"], cancel["runId"], cancel["reason"]) == (here.job_id, run.run_id, "run cancelled via API")
    assert CancelRun(run_id=run.run_id, force=False, reason="run cancelled via API") in rig.queue.announced
    assert rig.tables.runs[run.run_id].status == "cancelling"
