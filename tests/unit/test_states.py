"""Status enumerations, transitions and run conclusion."""

from __future__ import annotations

import pytest

from kici_core import errors, states
from kici_core.states import Actor, JobStatus, Kind, RunStatus


def test_exact_wire_values():
    assert [s.value for s in RunStatus] == [
        "pending",
        "running",
        "success",
        "failed",
        "cancelled",
        "cancelling",
        "held",
    ]
    assert [s.value for s in JobStatus] == [
        "pending", "queued", "running", "recovering", "cancelling", "success", "failed",
        "cancelled", "skipped", "timed_out_stale", "drift_dropped",
    ]  # fmt: skip
    assert {s.value for s in states.StepStatus} == {
        "running",
        "success",
        "failed",
        "skipped",
        "pending",
        "cancelled",
    }
    assert {s.value for s in states.DispatchStatus} == {
        "pending", "dispatched", "completed", "failed", "expired", "recovering",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "status", "terminal"),
    [
        ("run", "success", True),
        ("run", "cancelling", False),
        ("job", "timed_out_stale", True),
        ("job", "recovering", False),
        ("job", "skipped", True),
        ("step", "pending", False),
        ("step", "cancelled", True),
        ("dispatch", "expired", True),
        ("dispatch", "recovering", False),
    ],
)
def test_terminal_predicate(kind, status, terminal):
    assert states.is_terminal(kind, status) is terminal


def test_allowed_transitions_apply():
    assert states.check_transition(Kind.job, "pending", "running", Actor.agent)
    assert states.check_transition("job", "running", "recovering", Actor.dispatcher)
    assert states.check_transition("job", "recovering", "running", Actor.dispatcher)
    assert states.check_transition("dispatch", "dispatched", "pending", Actor.dispatcher)
    assert states.check_transition("run", "running", "cancelling", Actor.cancel)


def test_idempotent_repeats_are_noops():
    assert states.check_transition("job", "success", "success") is False
    assert states.check_transition("job", "running", "running") is False
    assert states.check_transition("step", "running", "running") is False


def test_terminal_is_immutable():
    with pytest.raises(errors.Conflict, match="already failed"):
        states.check_transition("job", "failed", "success")
    with pytest.raises(errors.Conflict):
        states.check_transition("dispatch", "completed", "failed")


def test_disallowed_edges_and_actors():
    with pytest.raises(errors.Conflict):
        states.check_transition("job", "running", "pending")
    with pytest.raises(errors.Conflict, match="may not"):
        states.check_transition("job", "running", "success", Actor.cancel)
    with pytest.raises(errors.Conflict):
        states.check_transition("job", "pending", "recovering")


def test_unknown_values():
    with pytest.raises(errors.InvalidInput):
        states.check_transition("job", "pending", "done")
    with pytest.raises(errors.InvalidInput):
        states.is_terminal("pipeline", "pending")


def test_every_terminal_state_is_reachable_for_jobs():
    reached = {new for (_, new) in states.TRANSITIONS[Kind.job]}
    assert states.TERMINAL[Kind.job] <= reached


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], None),
        (["success", "running"], None),
        (["success", "skipped"], RunStatus.success),
        (["success", "cancelled"], RunStatus.cancelled),
        (["cancelled", "timed_out_stale"], RunStatus.failed),
        (["drift_dropped", "success"], RunStatus.failed),
        (["skipped"], RunStatus.success),
    ],
)
def test_run_conclusion(jobs, expected):
    assert states.run_conclusion(jobs) == expected
