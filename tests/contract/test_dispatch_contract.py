"""DispatchQueue, RunStore and ConcurrencyGroups contract: the fakes and the PostgreSQL adapters behave the same."""

from __future__ import annotations

import uuid

import anyio
import pytest

from kici_core import errors
from kici_core.dispatch_records import CancelRun, DispatchNotice, JobsQueued, Proceed
from kici_core.jsontypes import JSONObject
from kici_core.run_records import NewJob, NewRun
from tests.contract.conftest import FakeDispatchHarness, PgDispatchHarness
from tests.support.new_runs import new_job, new_run

pytestmark = pytest.mark.anyio

Harness = FakeDispatchHarness | PgDispatchHarness
LINUX = ({"kind": "exact", "value": "linux"},)


def job(name: str, *, needs: tuple[str, ...] = (), config: JSONObject | None = None) -> NewJob:
    return new_job(name, needs=needs, runs_on=LINUX, job_config={"name": name, **(config or {})})


def run_of(*jobs: NewJob, workflow: str = "ci") -> NewRun:
    return new_run(
        *jobs,
        workflow=workflow,
        trigger_decision={"matched": True},
        event={"event": "push", "payload": {"ref": "refs/heads/main"}},
    )


async def claim(h: Harness, job_id: str, agent_id: str, deadline: float) -> bool:
    return job_id in await h.queue.claim_many([(job_id, agent_id, deadline)])


async def pipeline(h: Harness) -> tuple[NewRun, NewJob, NewJob, NewJob]:
    """build -> test, plus an independent lint: build and lint are queued, test waits for build."""
    build, test, lint = job("build"), job("test", needs=("build",)), job("lint")
    run = run_of(build, test, lint)
    await h.add_run(run)
    return run, build, test, lint


# ------------------------------------------------------------------------------------------ queue reads
async def test_pending_rows_are_oldest_first_and_carry_their_matchers(dispatch_h: Harness) -> None:
    run, build, _test, lint = await pipeline(dispatch_h)
    rows = await dispatch_h.queue.pending()
    assert [r.job_id for r in rows] == [build.job_id, lint.job_id]
    assert all(r.run_id == run.run_id and r.runs_on == LINUX and r.attempts == 0 for r in rows)
    assert rows[0].seq < rows[1].seq
    assert [r.job_id for r in await dispatch_h.queue.pending(ids=[lint.job_id])] == [lint.job_id]
    assert await dispatch_h.queue.pending_positions() == [(r.job_id, r.seq) for r in rows]
    assert await dispatch_h.queue.depth() == {"pending": 2, "dispatched": 0}


async def test_pending_since_reads_newer_rows_and_named_ones(dispatch_h: Harness) -> None:
    run, build, _test, lint = await pipeline(dispatch_h)
    first = (await dispatch_h.queue.pending())[0]
    assert [r.job_id for r in await dispatch_h.queue.pending_since(first.seq)] == [lint.job_id]
    named = await dispatch_h.queue.pending_since(10**12, named=[run.run_id, "not-a-uuid"])
    assert [r.job_id for r in named] == [build.job_id, lint.job_id]
    assert [r.job_id for r in await dispatch_h.queue.pending_since(10**12, named=[build.job_id])] == [build.job_id]


# ------------------------------------------------------------------------------------------ claims
async def test_a_row_is_claimed_once_and_loaded_for_job_dispatch(dispatch_h: Harness) -> None:
    run, build, _test, lint = await pipeline(dispatch_h)
    deadline = dispatch_h.now() + 30
    won = await dispatch_h.queue.claim_many([(build.job_id, "agent-1", deadline)])
    assert list(won) == [build.job_id]
    row = won[build.job_id]
    assert (row.run_id, row.workflow_name, row.job_name, row.base_name) == (run.run_id, "ci", "build", "build")
    assert (row.repo_url, row.ref, row.sha, row.provider, row.routing_key, row.repo_identifier) == (
        run.repo_url,
        run.ref,
        run.sha,
        "github",
        "github:1",
        "acme/app",
    )
    assert row.job_config["name"] == "build"
    assert row.event == run.event
    assert (row.upstream_outputs, row.upstream_statuses) == ({}, {})
    assert await dispatch_h.queue.claim_many([(build.job_id, "agent-2", deadline)]) == {}
    assert await claim(dispatch_h, lint.job_id, "agent-2", deadline) is True
    assert await dispatch_h.queue.depth() == {"pending": 0, "dispatched": 2}


async def test_only_the_agent_a_job_went_to_owns_it(dispatch_h: Harness) -> None:
    _run, build, _test, lint = await pipeline(dispatch_h)
    await claim(dispatch_h, build.job_id, "agent-1", dispatch_h.now() + 30)
    assert await dispatch_h.queue.owned("agent-1", build.job_id) is True
    assert await dispatch_h.queue.owned("agent-2", build.job_id) is False
    assert await dispatch_h.queue.owned("agent-1", lint.job_id) is False  # still pending
    await dispatch_h.runs.finish_job(build.job_id, "success")
    assert await dispatch_h.queue.owned("agent-1", build.job_id) is True  # its late messages stay harmless
    assert await dispatch_h.queue.owned("agent-2", build.job_id) is False


async def test_requeue_puts_a_dispatched_row_back_and_announces_it(dispatch_h: Harness) -> None:
    _run, build, _test, _lint = await pipeline(dispatch_h)
    seen: list[DispatchNotice] = []
    async with dispatch_h.queue.notices() as notices:
        assert await dispatch_h.queue.requeue(build.job_id, attempts=1) is False  # not dispatched
        await claim(dispatch_h, build.job_id, "agent-1", dispatch_h.now() + 30)
        assert await dispatch_h.queue.requeue(build.job_id, attempts=1) is True
        with anyio.fail_after(10):
            async for notice in notices:
                seen.append(notice)
                break
    assert seen == [JobsQueued((build.job_id,))]
    [row] = await dispatch_h.queue.pending(ids=[build.job_id])
    assert row.attempts == 1
    assert await dispatch_h.queue.owned("agent-1", build.job_id) is False


async def test_notices_reach_every_listener_in_order(dispatch_h: Harness) -> None:
    sent: list[DispatchNotice] = [
        CancelRun(run_id="r1", force=True, reason="stop | now"),
        Proceed(job_id="j1", run_id="r1", agent_id="a1"),
        JobsQueued(("x", "y")),
        JobsQueued(),
    ]
    got: list[DispatchNotice] = []
    async with dispatch_h.queue.notices() as notices:
        for notice in sent:
            await dispatch_h.queue.announce(notice)
        with anyio.fail_after(10):
            async for notice in notices:
                got.append(notice)
                if len(got) == len(sent):
                    break
    assert got == sent


# ------------------------------------------------------------------------------------------ deadlines
async def test_overdue_lists_unacknowledged_recovering_and_expired_rows(dispatch_h: Harness) -> None:
    _run, build, _test, lint = await pipeline(dispatch_h)
    past = dispatch_h.now() - 60
    await claim(dispatch_h, build.job_id, "agent-1", past)
    assert (await dispatch_h.queue.overdue(grace_s=5)).ack == ((build.job_id, 0),)
    await dispatch_h.queue.acks_resolved([(build.job_id, "agent-2")])  # another agent's ack changes nothing
    assert (await dispatch_h.queue.overdue(grace_s=5)).ack == ((build.job_id, 0),)
    await dispatch_h.queue.acks_resolved([(build.job_id, "agent-1")])
    assert (await dispatch_h.queue.overdue(grace_s=5)).ack == ()
    await dispatch_h.expire_queue_rows()
    assert (await dispatch_h.queue.overdue(grace_s=5)).expired == ((lint.job_id, 0),)
    await dispatch_h.queue.mark_recovering(build.job_id, agent_id="agent-1", deadline=past)
    overdue = await dispatch_h.queue.overdue(grace_s=5)
    assert (overdue.ack, overdue.recovery) == ((), ((build.job_id, 0),))


async def test_a_started_job_is_not_overdue_for_its_ack(dispatch_h: Harness) -> None:
    _run, build, _test, _lint = await pipeline(dispatch_h)
    await claim(dispatch_h, build.job_id, "agent-1", dispatch_h.now() - 60)
    assert (await dispatch_h.runs.job_started(build.job_id, agent_id="agent-1")).changed is True
    assert (await dispatch_h.queue.overdue(grace_s=5)).ack == ()


async def test_recovery_and_reclaim(dispatch_h: Harness) -> None:
    run, build, _test, _lint = await pipeline(dispatch_h)
    await claim(dispatch_h, build.job_id, "agent-1", dispatch_h.now() + 30)
    await dispatch_h.runs.job_started(build.job_id, agent_id="agent-1")
    deadline = dispatch_h.now() + 120
    assert await dispatch_h.queue.mark_recovering(build.job_id, agent_id="agent-1", deadline=deadline) is True
    assert await dispatch_h.queue.mark_recovering(build.job_id, agent_id="agent-1", deadline=deadline) is False
    assert (await dispatch_h.job_status(build.job_id), await dispatch_h.row_status(build.job_id)) == (
        "recovering",
        "recovering",
    )
    [rec] = await dispatch_h.queue.recovering()
    assert (rec.job_id, rec.run_id, rec.agent_id) == (build.job_id, run.run_id, "agent-1")
    assert abs(rec.deadline - deadline) < 0.01
    assert await dispatch_h.queue.reclaimable("agent-2", [build.job_id]) == []
    [(job_id, run_id, until)] = await dispatch_h.queue.reclaimable("agent-1", [build.job_id])
    assert (job_id, run_id) == (build.job_id, run.run_id) and until is not None
    assert await dispatch_h.queue.owned("agent-1", build.job_id) is True
    assert await dispatch_h.queue.reclaim(build.job_id, agent_id="agent-1") is True
    assert (await dispatch_h.job_status(build.job_id), await dispatch_h.row_status(build.job_id)) == (
        "running",
        "dispatched",
    )
    assert await dispatch_h.queue.recovering() == []


# ------------------------------------------------------------------------------------------ run store
async def test_a_finished_job_releases_its_needs_and_the_last_one_concludes_the_run(dispatch_h: Harness) -> None:
    run, build, test, lint = await pipeline(dispatch_h)
    for j in (build, lint):
        await claim(dispatch_h, j.job_id, "agent-1", dispatch_h.now() + 30)
        await dispatch_h.runs.job_started(j.job_id, agent_id="agent-1")
    assert await dispatch_h.run_status(run.run_id) == "running"
    result = await dispatch_h.runs.finish_job(build.job_id, "success", outputs={"version": "1.2"})
    assert (result.changed, result.run_id, result.queued, result.run_status) == (True, run.run_id, (test.job_id,), None)
    assert await dispatch_h.row_status(build.job_id) == "completed"
    again = await dispatch_h.runs.finish_job(build.job_id, "failed")
    assert again.changed is False
    won = await dispatch_h.queue.claim_many([(test.job_id, "agent-1", dispatch_h.now() + 30)])
    assert won[test.job_id].upstream_outputs == {"build": {"version": "1.2"}}
    assert won[test.job_id].upstream_statuses == {"build": "success"}
    assert (await dispatch_h.runs.finish_job(lint.job_id, "success")).run_status is None
    final = await dispatch_h.runs.finish_job(test.job_id, "success")
    assert final.run_status == "success"
    assert await dispatch_h.run_status(run.run_id) == "success"
    with pytest.raises(errors.InvalidInput):
        await dispatch_h.runs.finish_job(test.job_id, "running")


async def test_a_failed_upstream_skips_its_downstream(dispatch_h: Harness) -> None:
    _run, build, test, lint = await pipeline(dispatch_h)
    result = await dispatch_h.runs.finish_job(build.job_id, "failed", error="exit 1", row_status="failed")
    assert (result.queued, result.skipped) == ((), (test.job_id,))
    assert await dispatch_h.job_status(test.job_id) == "skipped"
    assert await dispatch_h.row_status(build.job_id) == "expired"  # it was still pending
    assert (await dispatch_h.runs.finish_job(lint.job_id, "success")).run_status == "failed"


async def test_a_guarded_finish_loses_to_a_row_in_another_state(dispatch_h: Harness) -> None:
    _run, build, _test, _lint = await pipeline(dispatch_h)
    await claim(dispatch_h, build.job_id, "agent-1", dispatch_h.now() + 30)
    lost = await dispatch_h.runs.finish_job(build.job_id, "failed", row_status="failed", require_row="recovering")
    assert lost.changed is False
    assert await dispatch_h.job_status(build.job_id) == "pending"
    won = await dispatch_h.runs.finish_job(build.job_id, "failed", row_status="failed", require_row="dispatched")
    assert won.changed is True
    assert await dispatch_h.row_status(build.job_id) == "failed"


async def test_status_changes_are_guarded(dispatch_h: Harness) -> None:
    _run, build, _test, _lint = await pipeline(dispatch_h)
    assert await dispatch_h.runs.set_job_status(build.job_id, "cancelling", from_statuses=["running"]) is False
    await dispatch_h.runs.job_started(build.job_id, agent_id="agent-1")
    assert await dispatch_h.runs.set_job_status(build.job_id, "cancelling", from_statuses=["running"]) is True
    assert await dispatch_h.job_status(build.job_id) == "cancelling"
    await dispatch_h.runs.finish_job(build.job_id, "cancelled")
    assert (await dispatch_h.runs.job_started(build.job_id, agent_id="agent-1")).changed is False


async def test_steps_and_logs_belong_to_their_run(dispatch_h: Harness) -> None:
    run, build, _test, _lint = await pipeline(dispatch_h)
    other = str(uuid.uuid4())
    assert (
        await dispatch_h.runs.step_status(
            run_id=run.run_id,
            job_id=build.job_id,
            step_index=0,
            step_name="make",
            state="running",
            data=None,
            step_type=None,
        )
        is True
    )
    assert (
        await dispatch_h.runs.step_status(
            run_id=run.run_id,
            job_id=build.job_id,
            step_index=0,
            step_name="make",
            state="success",
            data={"exitCode": 0},
            step_type=None,
        )
        is True
    )
    assert (
        await dispatch_h.runs.step_status(
            run_id=run.run_id,
            job_id=build.job_id,
            step_index=0,
            step_name="make",
            state="running",
            data=None,
            step_type=None,
        )
        is False
    )
    assert (
        await dispatch_h.runs.step_status(
            run_id=other, job_id=build.job_id, step_index=1, step_name="x", state="running", data=None, step_type=None
        )
        is False
    )
    assert (
        await dispatch_h.runs.append_log(
            run_id=run.run_id, job_id=build.job_id, step_index=0, lines=["compiling", "done"]
        )
        is True
    )
    assert await dispatch_h.runs.append_log(run_id=other, job_id=build.job_id, step_index=0, lines=["x"]) is False


async def test_cancel_expires_waiting_work_and_reports_what_agents_hold(dispatch_h: Harness) -> None:
    run, build, test, lint = await pipeline(dispatch_h)
    await claim(dispatch_h, build.job_id, "agent-1", dispatch_h.now() + 30)
    held = await dispatch_h.runs.begin_cancel(run.run_id, reason="stop", cancelled_by="admin")
    assert [(h.job_id, h.agent_id, h.status) for h in held] == [(build.job_id, "agent-1", "dispatched")]
    assert (await dispatch_h.job_status(lint.job_id), await dispatch_h.row_status(lint.job_id)) == (
        "cancelled",
        "expired",
    )
    assert await dispatch_h.job_status(test.job_id) == "cancelled"
    assert await dispatch_h.runs.settle_cancel(run.run_id, reason="stop", notified=True) == "cancelling"
    assert await dispatch_h.run_status(run.run_id) == "cancelling"
    assert await dispatch_h.runs.settle_cancel(run.run_id, reason="stop", notified=False) == "cancelled"
    assert (await dispatch_h.job_status(build.job_id), await dispatch_h.row_status(build.job_id)) == (
        "cancelled",
        "failed",
    )
    with pytest.raises(errors.Conflict, match="cancelled"):
        await dispatch_h.runs.begin_cancel(run.run_id, reason="again", cancelled_by=None)
    with pytest.raises(errors.NotFound):
        await dispatch_h.runs.begin_cancel(str(uuid.uuid4()), reason="x", cancelled_by=None)


# ------------------------------------------------------------------------------------------ agents
async def test_the_agent_table_follows_connections(dispatch_h: Harness) -> None:
    q = dispatch_h.queue
    for agent, instance in (("a1", "i1"), ("a2", "i1"), ("a3", "i2")):
        await q.agent_connected(
            agent_id=agent,
            labels=["linux", "x64"],
            mandatory=[],
            platform="linux",
            arch="x64",
            version="1.0",
            hostname="h",
            max_concurrency=2,
            token_id=None,
            instance_id=instance,
            metadata={"version": "1.0"},
        )
    assert [(a.agent_id, a.instance, a.labels) for a in await q.agents()] == [
        ("a1", "i1", ("linux", "x64")),
        ("a2", "i1", ("linux", "x64")),
        ("a3", "i2", ("linux", "x64")),
    ]
    await q.agent_disconnected("a3", instance_id="i1")  # held by another process: unchanged
    await q.release_instance("i1", keep=["a2"])
    assert [a.agent_id for a in await q.agents()] == ["a2", "a3"]
    await q.agent_disconnected("a3", instance_id="i2")
    assert [a.agent_id for a in await q.agents()] == ["a2"]


async def test_an_agent_id_stays_bound_to_its_first_live_token(dispatch_h: Harness) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    await dispatch_h.add_agent_token(first)
    await dispatch_h.add_agent_token(second)
    q = dispatch_h.queue
    assert await q.bind_agent_token("a1", first) is True
    assert await q.bind_agent_token("a1", first) is True
    assert await q.bind_agent_token("a1", second) is False
    await dispatch_h.revoke_agent_token(first)
    assert await q.bind_agent_token("a1", second) is True
    assert await q.release_agent("a1") is True
    assert await q.release_agent("a1") is False
    assert await q.release_agent("unknown") is False


async def test_orphaned_dispatches_are_those_no_live_process_holds(dispatch_h: Harness) -> None:
    _run, build, _test, lint = await pipeline(dispatch_h)
    q = dispatch_h.queue
    await q.agent_connected(
        agent_id="elsewhere",
        labels=[],
        mandatory=[],
        platform=None,
        arch=None,
        version=None,
        hostname=None,
        max_concurrency=1,
        token_id=None,
        instance_id="i2",
        metadata={},
    )
    await claim(dispatch_h, build.job_id, "mine", dispatch_h.now() + 30)
    await claim(dispatch_h, lint.job_id, "elsewhere", dispatch_h.now() + 30)
    assert [(j, a) for j, _r, a in await q.orphaned_dispatched("i1")] == [(build.job_id, "mine")]


async def test_a_singleton_duty_is_held_by_one_holder_at_a_time(dispatch_h: Harness) -> None:
    async with dispatch_h.queue.singleton("dispatch-sweeps", "i1") as first:
        async with dispatch_h.queue.singleton("dispatch-sweeps", "i2") as second:
            assert (first, second) == (True, False)
    async with dispatch_h.queue.singleton("dispatch-sweeps", "i2") as again:
        assert again is True


# ------------------------------------------------------------------------------------------ concurrency groups
async def test_a_concurrency_group_queues_the_second_run_and_promotes_it(dispatch_h: Harness) -> None:
    group: JSONObject = {"workflowConcurrency": {"hasGroup": True, "cancelInProgress": False}}
    one, two = run_of(job("deploy", config=group)), run_of(job("deploy", config=group))
    await dispatch_h.add_run(one)
    await dispatch_h.add_run(two)
    first = await dispatch_h.groups.report(job_id=one.jobs[0].job_id, run_id=one.run_id, agent_id="a1", group="prod")
    second = await dispatch_h.groups.report(job_id=two.jobs[0].job_id, run_id=two.run_id, agent_id="a2", group="prod")
    assert (first.action, second.action) == ("proceed", "wait")
    promoted = await dispatch_h.groups.release_run(one.run_id)
    assert [(p.job_id, p.run_id, p.agent_id) for p in promoted] == [(two.jobs[0].job_id, two.run_id, "a2")]
    assert await dispatch_h.groups.drop_agent("a2") == 0  # no longer waiting
    plain = run_of(job("build"))
    await dispatch_h.add_run(plain)
    free = await dispatch_h.groups.report(job_id=plain.jobs[0].job_id, run_id=plain.run_id, agent_id="a3", group="prod")
    assert free.action == "proceed"


async def test_ended_runs_still_holding_or_waiting_on_slots_are_found_and_released(dispatch_h: Harness) -> None:
    group: JSONObject = {"workflowConcurrency": {"hasGroup": True, "cancelInProgress": False}}
    one, two, three = (run_of(job("deploy", config=group)) for _ in range(3))
    for run in (one, two, three):
        await dispatch_h.add_run(run)
    for run, agent in ((one, "a1"), (two, "a2"), (three, "a3")):
        await dispatch_h.groups.report(job_id=run.jobs[0].job_id, run_id=run.run_id, agent_id=agent, group="prod")
    assert await dispatch_h.groups.ended_runs_with_slots(10) == []  # all three still running

    # one (holding) and three (waiting) end, and the process dies before releasing their slots
    for run, status in ((one, "success"), (three, "failed")):
        await claim(dispatch_h, run.jobs[0].job_id, "a1", dispatch_h.now() + 30)
        result = await dispatch_h.runs.finish_job(run.jobs[0].job_id, status)
        assert result.run_status == status
    assert sorted(await dispatch_h.groups.ended_runs_with_slots(10)) == sorted([one.run_id, three.run_id])
    assert len(await dispatch_h.groups.ended_runs_with_slots(1)) == 1

    assert await dispatch_h.groups.release_run(three.run_id) == []  # a waiter leaving lets nobody in
    promoted = await dispatch_h.groups.release_run(one.run_id)
    assert [(p.job_id, p.run_id, p.agent_id) for p in promoted] == [(two.jobs[0].job_id, two.run_id, "a2")]
    assert await dispatch_h.groups.ended_runs_with_slots(10) == []
    assert await dispatch_h.groups.release_run(one.run_id) == []  # a second repairer finds nothing to do
