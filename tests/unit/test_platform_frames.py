"""Domain events for the Platform and the one module that turns them into frames (platform spec §2.4, §2.7)."""

from __future__ import annotations

import json

import pytest

from kici_adapters.platform import messages
from kici_core import platform_events as pe

RUN = "5b0c7a52-6a39-4b57-9d2e-0d1f6f3f0a11"
JOB = "0c3e4a0b-2f5c-4d0a-9a57-3a5d1c9e2b77"


def _frame(event: pe.PlatformEvent) -> dict[str, object]:
    """As the outbox does it: store the record as JSON, read it back, turn it into a frame."""
    stored = json.loads(json.dumps(event.record()))
    return dict(messages.frame(event.KIND, stored, message_id="m-1", timestamp_ms=1_700_000_000_000))


def test_run_status_frames() -> None:
    created = pe.RunStatusChanged(
        run_id=RUN,
        workflow_name="ci",
        status="pending",
        started_at_ms=1000,
        job_count=3,
        repo_identifier="acme/app",
        repo_provider="github",
        sha="a" * 40,
        ref="refs/heads/main",
        trigger_event="push",
    )
    assert _frame(created) == {
        "type": "execution.status",
        "runId": RUN,
        "workflowName": "ci",
        "status": "pending",
        "repoIdentifier": "acme/app",
        "repoProvider": "github",
        "sha": "a" * 40,
        "ref": "refs/heads/main",
        "triggerEvent": "push",
        "jobCount": 3,
        "startedAt": 1000,
        "messageId": "m-1",
        "timestamp": 1_700_000_000_000,
    }
    failed = pe.RunStatusChanged(
        run_id=RUN,
        workflow_name="w" * 300,
        status="failed",
        started_at_ms=1000,
        completed_at_ms=5000,
        duration_ms=4000,
        log_bytes=0,
        failure_reason="boom",
    )
    frame = _frame(failed)
    assert frame["workflowName"] == "w" * 128  # bounded
    assert (frame["completedAt"], frame["durationMs"], frame["logBytes"], frame["failureReason"]) == (
        5000,
        4000,
        0,
        "boom",
    )
    assert "sha" not in frame and "repoIdentifier" not in frame  # absent optional fields are omitted, never null


def test_job_step_log_and_decision_frames() -> None:
    job = pe.JobStatusChanged(
        run_id=RUN,
        job_id=JOB,
        job_name="build (linux)",
        status="running",
        runs_on_labels=tuple(f"l{i}" for i in range(40)),
        agent_id="agent-1",
        matrix_values={"os": "linux"},
        started_at_ms=2000,
    )
    frame = _frame(job)
    assert frame["type"] == "job.status.forward" and frame["agentId"] == "agent-1"
    assert frame["orchestratorId"] is None  # nullable: sent as null
    assert frame["matrixValues"] == {"os": "linux"} and frame["startedAt"] == 2000
    assert isinstance(frame["runsOnLabels"], list) and len(frame["runsOnLabels"]) == 30
    assert "errorMessage" not in frame and "logBytes" not in frame

    step = pe.StepStatusChanged(
        run_id=RUN,
        job_id=JOB,
        job_name="build",
        step_index=1,
        step_name="test",
        state="success",
        data={"exitCode": 0},
        secrets_accessed=["TOKEN"],
    )
    assert _frame(step) == {
        "type": "step.status.forward",
        "runId": RUN,
        "jobId": JOB,
        "jobName": "build",
        "stepIndex": 1,
        "stepName": "test",
        "state": "success",
        "data": {"exitCode": 0},
        "secretsAccessed": ["TOKEN"],
        "messageId": "m-1",
        "timestamp": 1_700_000_000_000,
    }

    log = pe.LogLines(run_id=RUN, job_id=JOB, step_index=-1, lines=("a", "b"))
    assert _frame(log) == {
        "type": "log.chunk",
        "runId": RUN,
        "jobId": JOB,
        "stepIndex": -1,
        "lines": ["a", "b"],
        "messageId": "m-1",
        "timestamp": 1_700_000_000_000,
    }

    decided = pe.DeliveryDecided(
        trace_id="t-1",
        delivery_id="d-1",
        webhook_event="push",
        ref="main",
        matched_workflows=1,
        total_workflows=2,
        decisions=({"workflowName": "ci", "matched": True},),
    )
    frame = _frame(decided)
    assert frame["type"] == "execution.event" and frame["runId"] == "t-1" and frame["event"] == "started"
    assert frame["data"] == {
        "deliveryId": "d-1",
        "webhookEvent": "push",
        "action": None,
        "repoIdentifier": None,
        "ref": "main",
        "matchedWorkflows": 1,
        "totalWorkflows": 2,
        "decisions": [{"workflowName": "ci", "matched": True}],
    }


def test_rows_of_an_older_release_hold_frames_and_still_read() -> None:
    legacy = {
        "type": "log.chunk",
        "messageId": "kept",
        "runId": RUN,
        "jobId": JOB,
        "stepIndex": 0,
        "lines": ["x"],
        "orgId": "acme",
    }
    frame = messages.frame("log.chunk", legacy, message_id="m-1", timestamp_ms=7)
    assert frame == {
        "type": "log.chunk",
        "messageId": "kept",
        "runId": RUN,
        "jobId": JOB,
        "stepIndex": 0,
        "lines": ["x"],
        "timestamp": 7,
    }  # tenant field dropped


@pytest.mark.parametrize(("kind", "record"), [("run_status", {"run_id": RUN}), ("nonsense", {})])
def test_unreadable_records_are_not_events(kind: str, record: dict[str, object]) -> None:
    assert pe.from_record(kind, record) is None  # type: ignore[arg-type]
