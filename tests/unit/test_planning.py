"""Run planning, the needs scheduler (release / skip cascade) and run conclusion."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import lockfile, planning
from kici_core.errors import InvalidInput, NotFound
from kici_core.planning import Edge, Skip
from tests.support.props import examples

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lockfiles"
ALWAYS = ["success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped"]


def fixture(name: str) -> lockfile.Lockfile:
    return lockfile.parse_lockfile((FIXTURES / name).read_bytes())


def job(name: str, **extra: Any) -> dict[str, Any]:
    return {"_type": "static", "name": name, "runsOn": [], "needs": [], "steps": [{"name": "s"}], **extra}


def lock(*jobs: dict[str, Any], name: str = "wf") -> lockfile.Lockfile:
    return lockfile.parse_lockfile(
        {"schemaVersion": 29, "workflows": [{"name": name, "triggers": [], "jobs": list(jobs)}]}
    )


def one_plan(lf: lockfile.Lockfile) -> planning.RunPlan:
    (plan,) = planning.plan_runs(lf, lf.workflow_names)
    return plan


# --- planning ------------------------------------------------------------------------------------------


def test_example_a_plan() -> None:
    plan = one_plan(fixture("example_a_ci.json"))
    assert plan.workflow_name == "ci"
    assert [(j.job_id, j.name, j.status) for j in plan.jobs] == [
        ("ci/lint", "lint", "pending"),
        ("ci/test", "test", "pending"),
    ]
    assert plan.runnable == ("lint",)
    assert plan.job("test").needs == (Edge(upstream="lint", run_on=frozenset({"success"})),)
    assert plan.conclusion is None


def test_example_b_plan_expands_matrix_and_fails_unsupported_job() -> None:
    plan = one_plan(fixture("example_b_release.json"))
    children = ["build (x64, linux)", "build (arm64, linux)", "build (arm64, macos)"]
    assert [j.name for j in plan.jobs] == [*children, "publish", "notify"]
    assert plan.job("build (arm64, macos)").matrix_values == {"arch": "arm64", "os": "macos"}
    assert plan.job("build (arm64, macos)").base_name == "build"
    publish = plan.job("publish")
    assert [e.upstream for e in publish.needs] == children
    assert publish.status == "failed" and "approval" in (publish.reason or "")
    # notify runs whatever publish did, so it may start right away; build has maxParallel 2, so its third
    # child waits for one of the first two to finish.
    assert plan.runnable == (*children[:2], "notify")
    assert plan.notes == ("publish: unsupported: approval gates are not supported",)


def test_id_factory_is_called_once_per_expanded_job() -> None:
    counter = itertools.count(1)
    lf = fixture("run_steps_matrix.json")
    (plan,) = planning.plan_runs(lf, ["build"], id_factory=lambda: f"id-{next(counter)}")
    assert [j.job_id for j in plan.jobs] == [f"id-{i}" for i in range(1, 7)]
    assert [j.name for j in plan.jobs][1:5] == [
        "test (linux, 3.11)",
        "test (linux, 3.12)",
        "test (macos, 3.12)",
        "test (linux, 3.13)",
    ]


def test_plan_runs_one_run_per_workflow_in_order_and_unknown_names() -> None:
    data = json.loads((FIXTURES / "example_a_ci.json").read_text())
    second = json.loads(json.dumps(data["workflows"][0])) | {"name": "nightly"}
    data["workflows"].append(second)
    lf = lockfile.parse_lockfile(data)
    plans = planning.plan_runs(lf, ["nightly", "ci", "nightly"])
    assert [p.workflow_name for p in plans] == ["nightly", "ci"]
    assert plans[0].jobs[0].job_id == "nightly/lint"
    with pytest.raises(NotFound, match='"nope"'):
        planning.plan_runs(lf, ["ci", "nope"])
    assert planning.plan_runs(lf, []) == []


def test_dynamic_generator_fails_and_cascades_at_plan_time() -> None:
    lf = lock(
        {"_type": "dynamic", "source": {"file": "x.ts", "index": 0}, "group": "pkgs"},
        job("after", needs=[{"group": "pkgs", "runOn": ["success"]}]),
        job("cleanup", needs=[{"group": "pkgs", "runOn": ALWAYS}]),
    )
    plan = one_plan(lf)
    assert plan.statuses == {"dynamic:pkgs": "failed", "after": "skipped", "cleanup": "pending"}
    assert plan.job("after").reason == "upstream_unmet: dynamic:pkgs (failed)"
    assert plan.runnable == ("cleanup",)


def test_everything_unsupported_concludes_immediately() -> None:
    lf = lock(job("t", matrix={"_type": "static", "values": []}), job("u", needs=["t"]))
    plan = one_plan(lf)
    assert plan.job("t").reason == "matrix_expansion: matrix expands to zero combinations"
    assert plan.runnable == ()
    assert plan.conclusion == planning.Conclusion(status="failed", description="Failed jobs: t")


def test_workflow_without_jobs_has_no_conclusion() -> None:
    plan = one_plan(
        lockfile.parse_lockfile({"schemaVersion": 29, "workflows": [{"name": "e", "triggers": [], "jobs": []}]})
    )
    assert plan.jobs == () and plan.runnable == () and plan.conclusion is None


# --- release / skip cascade ------------------------------------------------------------------------------


def matrix_plan() -> planning.RunPlan:
    return one_plan(
        lock(
            job("build", matrix={"_type": "static", "values": ["a", "b"]}),
            job("test", needs=["build"]),
            job("report", needs=[{"name": "test", "runOn": ALWAYS}]),
            job("rollback", needs=[{"name": "test", "runOn": ["failed", "timed_out_stale"]}]),
        )
    )


def test_needs_on_matrix_waits_for_every_child() -> None:
    plan = matrix_plan()
    statuses = dict(plan.statuses) | {"build (a)": "success", "build (b)": "running"}
    assert planning.release(plan.graph, statuses) == planning.Release()
    statuses["build (b)"] = "success"
    assert planning.release(plan.graph, statuses).runnable == ("test",)


def test_skip_cascade_honours_run_on() -> None:
    plan = matrix_plan()
    statuses = dict(plan.statuses) | {"build (a)": "success", "build (b)": "failed"}
    result = planning.release(plan.graph, statuses)
    assert result.skipped == (
        Skip(job="test", reason="upstream_unmet: build (b) (failed)"),
        Skip(job="rollback", reason="upstream_unmet: test (skipped)"),
    )
    assert result.runnable == ("report",)  # "always" accepts a skipped upstream


def test_on_failure_edge() -> None:
    plan = matrix_plan()
    base = dict(plan.statuses) | {"build (a)": "success", "build (b)": "success", "test": "failed"}
    assert planning.release(plan.graph, base).runnable == ("report", "rollback")
    ok = base | {"test": "success"}
    assert planning.release(plan.graph, ok).skipped == (Skip(job="rollback", reason="upstream_unmet: test (success)"),)


def test_skip_happens_while_other_upstreams_still_run() -> None:
    plan = one_plan(lock(job("a"), job("b"), job("c", needs=["a", "b"])))
    result = planning.release(plan.graph, {"a": "running", "b": "cancelled", "c": "pending"})
    assert result.skipped == (Skip(job="c", reason="upstream_unmet: b (cancelled)"),)


def test_released_and_non_pending_jobs_are_not_released_again() -> None:
    plan = one_plan(lock(job("a"), job("b")))
    assert planning.release(plan.graph, {"a": "pending", "b": "pending"}).runnable == ("a", "b")
    assert planning.release(plan.graph, {"a": "pending", "b": "queued"}, released={"a"}) == planning.Release()


def test_release_rejects_bad_statuses() -> None:
    plan = one_plan(lock(job("a")))
    with pytest.raises(InvalidInput, match="no status"):
        planning.release(plan.graph, {})
    with pytest.raises(InvalidInput, match='unknown status "done"'):
        planning.release(plan.graph, {"a": "done"})


def test_upstream_statuses_per_child() -> None:
    plan = matrix_plan()
    statuses = dict(plan.statuses) | {"build (a)": "success", "build (b)": "skipped"}
    assert planning.upstream_statuses(plan.graph, "test", statuses) == {
        "build (a)": "success",
        "build (b)": "skipped",
    }


def test_needs_graph_validation() -> None:
    ok = frozenset({"success"})
    with pytest.raises(InvalidInput, match="unknown job"):
        planning.needs_graph({"a": [Edge(upstream="z", run_on=ok)]})
    with pytest.raises(InvalidInput, match="cycle"):
        planning.needs_graph({"a": [Edge(upstream="b", run_on=ok)], "b": [Edge(upstream="a", run_on=ok)]})
    with pytest.raises(InvalidInput, match="run_on"):
        planning.needs_graph({"a": [], "b": [Edge(upstream="a", run_on=frozenset({"running"}))]})
    graph = planning.needs_graph({"late": [Edge(upstream="early", run_on=ok)], "early": []})
    assert graph.order == ("early", "late")
    assert graph.downstreams == {"late": (), "early": ("late",)}


# --- conclusion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({"a": "success", "b": "skipped"}, planning.Conclusion(status="success")),
        ({"a": "cancelled", "b": "success"}, planning.Conclusion(status="cancelled")),
        (
            {"a": "failed", "b": "cancelled", "c": "timed_out_stale", "d": "drift_dropped"},
            planning.Conclusion(status="failed", description="Failed jobs: a, c, d"),
        ),
        ({"a": "success", "b": "running"}, None),
        ({"a": "queued"}, None),
        ({}, None),
    ],
)
def test_conclude(statuses: dict[str, str], expected: planning.Conclusion | None) -> None:
    assert planning.conclude(statuses) == expected


# --- properties: a random DAG always drains, and never releases early ------------------------------------

FINISH = ["success", "failed", "cancelled", "timed_out_stale", "drift_dropped"]


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[Edge]]:
    n = draw(st.integers(min_value=1, max_value=9))
    names = [f"j{i}" for i in range(n)]
    order = draw(st.permutations(names))  # plan order differs from dependency order
    edges: dict[str, list[Edge]] = {}
    for i, name in enumerate(names):
        ups = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
        edges[name] = [
            Edge(
                upstream=up,
                run_on=frozenset(draw(st.lists(st.sampled_from(ALWAYS), min_size=1, unique=True))),
            )
            for up in ups
        ]
    return {name: edges[name] for name in order}


@settings(max_examples=examples(30), deadline=None)
@given(edges=dags(), data=st.data())
def test_schedule_invariants(edges: dict[str, list[Edge]], data: st.DataObject) -> None:
    graph = planning.needs_graph(edges)
    statuses = dict.fromkeys(edges, "pending")
    released: set[str] = set()
    running: list[str] = []
    for _ in range(4 * len(edges) + 2):
        result = planning.release(graph, statuses, released=frozenset(released))
        for skip in result.skipped:
            up, _, up_status = skip.reason.removeprefix("upstream_unmet: ").rpartition(" ")
            edge = next(e for e in edges[skip.job] if e.upstream == up)
            assert statuses[up] == up_status.strip("()") and up_status.strip("()") not in edge.run_on
            assert skip.job not in released
            statuses[skip.job] = "skipped"
        for name in result.runnable:
            assert name not in released
            for edge in edges[name]:
                assert statuses[edge.upstream] in edge.run_on  # terminal and accepted
            released.add(name)
            running.append(name)
            statuses[name] = "running"
        if not running:
            break
        finished = running.pop(data.draw(st.integers(min_value=0, max_value=len(running) - 1)))
        statuses[finished] = data.draw(st.sampled_from(FINISH))
    assert all(s in planning.TERMINAL_JOB_STATUSES for s in statuses.values()), statuses
    conclusion = planning.conclude(statuses)
    assert conclusion is not None
    values = set(statuses.values())
    if values & planning.FAILING_JOB_STATUSES:
        assert conclusion.status == "failed"
    elif "cancelled" in values:
        assert conclusion.status == "cancelled"
    else:
        assert conclusion.status == "success"
