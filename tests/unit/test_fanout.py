"""Fan-out limits of matrix children (maxParallel, failFast) and steps passed to agents untouched."""

from __future__ import annotations

from kici_core import fanout, lockfile, new_runs, planning
from kici_core.lockfile import SourceRef

PARALLEL_STEPS = [
    {
        "kind": "parallel",
        "name": "checks",
        "failFast": True,
        "maxParallel": 1,
        "children": [{"name": "lint", "hasOutputs": False}, {"name": "types", "hasOutputs": False}],
    },
    {
        "name": "compile",
        "hasOutputs": True,
        "retry": {"maxAttempts": 2, "delayMs": 10, "backoff": "fixed", "maxDelayMs": 10},
    },
]


def workflow(**job: object) -> lockfile.Workflow:
    base = {
        "_type": "static",
        "name": "m",
        "needs": [],
        "steps": PARALLEL_STEPS,
        "matrix": {"_type": "static", "values": ["a", "b", "c", "d"]},
        **job,
    }
    return lockfile.parse_workflow(
        {
            "name": "wf",
            "triggers": [],
            "jobs": [
                base,
                {
                    "_type": "static",
                    "name": "after",
                    "needs": [{"name": "m", "runOn": ["success", "failed", "cancelled"]}],
                    "steps": [{"name": "s"}],
                },
            ],
        },
        0,
        "workflows[0]",
    )


def limits(plan: planning.RunPlan) -> dict[str, fanout.Limits]:
    return {j.name: fanout.limits_of(j.base_name, j.lock_job.raw, child=j.matrix_values is not None) for j in plan.jobs}


def test_max_parallel_releases_the_first_children_then_one_per_finished_child() -> None:
    plan = planning.plan_workflow(workflow(maxParallel=2))
    assert plan.runnable == ("m (a)", "m (b)")
    lim = limits(plan)
    statuses = {"m (a)": "success", "m (b)": "running", "m (c)": "pending", "m (d)": "pending", "after": "pending"}
    released = frozenset({"m (a)", "m (b)"})
    assert fanout.cap(["m (c)", "m (d)"], lim, statuses, released) == ("m (c)",)
    assert fanout.cap(["m (c)", "m (d)", "other"], lim, {**statuses, "m (b)": "failed"}, released) == (
        "m (c)",
        "m (d)",
        "other",
    )


def test_without_limits_every_child_starts_and_fail_fast_is_off() -> None:
    plan = planning.plan_workflow(workflow())
    assert plan.runnable == ("m (a)", "m (b)", "m (c)", "m (d)")
    assert fanout.fail_fast_victims(limits(plan), {"m (a)": "failed", "m (b)": "running"}) == {}


def test_fail_fast_names_every_unfinished_sibling_after_the_first_failure() -> None:
    lim = limits(planning.plan_workflow(workflow(failFast=True, maxParallel=2)))
    statuses = {"m (a)": "success", "m (b)": "failed", "m (c)": "running", "m (d)": "pending", "after": "pending"}
    reason = "Cancelled: fail-fast after matrix child 'm (b)' failed"
    assert fanout.fail_fast_victims(lim, statuses) == {"m (c)": reason, "m (d)": reason}
    assert fanout.fail_fast_victims(lim, {**statuses, "m (b)": "success"}) == {}


def test_parallel_step_groups_reach_the_agent_untouched() -> None:
    plan = planning.plan_workflow(workflow(maxParallel=2))
    run = new_runs.new_run(
        plan,
        run_id="r",
        provider="github",
        routing_key="github:1",
        repo="a/b",
        repo_url="u",
        ref="main",
        sha=None,
        decision={},
        lock_source=SourceRef(file=".kici/workflows/ci.ts"),
        event={},
    )
    assert run.jobs[0].job_config["steps"] == PARALLEL_STEPS
    assert run.jobs[0].job_config["maxParallel"] == 2
