"""Check-run bodies (kici_core.checks) and GitHub's "Re-run" deliveries in the pipeline (over fakes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import count

import pytest

from kici_core import checks, handling
from kici_core.delivery_records import Delivery
from kici_core.jsontypes import JSONValue
from kici_core.pipeline import Pipeline, Provider
from kici_core.source_records import GitHubSource
from kici_core.testing import fakes

SHA = "c" * 40
RUN = "11111111-1111-4111-8111-111111111111"
JOB = "22222222-2222-4222-8222-222222222222"


def _view(**kw: object) -> checks.CheckView:
    base: dict[str, object] = {
        "name": "kici/ci/job/test (a)",
        "head_sha": SHA,
        "external_id": JOB,
        "run_id": RUN,
        "workflow_name": "ci",
        "job_name": "test (a)",
        "status": "queued",
        "trace_id": "delivery-1",
    }
    return checks.CheckView(**{**base, **kw})  # type: ignore[arg-type]


def test_queued_check_waits_for_an_agent_and_names_trace_and_run() -> None:
    body = checks.request_body(_view(details_url="https://dash/r/orgs/acme/runs/x"), create=True)
    assert body == {
        "name": "kici/ci/job/test (a)",
        "external_id": JOB,
        "status": "queued",
        "head_sha": SHA,
        "details_url": "https://dash/r/orgs/acme/runs/x",
        "output": {"title": "KiCI: ci/test (a)", "summary": f"Waiting for agent...\n\nTrace: delivery-1 | Run: {RUN}"},
    }


def test_completed_failure_shows_step_and_masked_tail_and_update_has_no_head_sha() -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    tail = checks.tail_lines(
        [f"line {i}" for i in range(100)]
        + ["auth https://x-access-token:abcd1234@github.com/a", "Authorization: token ghs_" + "A" * 36],
        mask=lambda s: s.replace("hunter2", "***"),
    )
    step = checks.FailedStep(index=1, name="unit", exit_code=2, error="exit 2", tail=tuple(tail))
    body = checks.request_body(
        _view(
            status="completed",
            conclusion="failure",
            detail="exit code 2",
            started_at=started,
            completed_at=started,
            failed_step=step,
            attempt=2,
        ),
        create=False,
    )
    assert "head_sha" not in body and body["conclusion"] == "failure"
    assert body["started_at"] == "2026-01-02T03:04:05Z" and body["completed_at"] == "2026-01-02T03:04:05Z"
    output = body["output"]
    assert isinstance(output, dict)
    summary = str(output["summary"])
    assert summary.startswith("Failed: exit code 2\n\n**Failing step:** `unit` (step 1, exit code 2)")
    assert f"Trace: delivery-1 | Run: {RUN} | Attempt: 2" in summary
    assert len(tail) == checks.MAX_TAIL_LINES and "line 99" in summary and "line 60" not in summary
    assert "abcd1234" not in summary and "https://***@github.com/a" in summary
    assert "ghs_A" not in summary and "Authorization: ***" in summary


def test_tail_is_bounded_in_bytes_and_masks_registered_secrets() -> None:
    lines = ["x" * 2000 + " hunter2"] * 50
    tail = checks.tail_lines(lines, mask=lambda s: s.replace("hunter2", "***"))
    assert sum(len(t) + 1 for t in tail) <= checks.MAX_TAIL_BYTES + 600
    assert all("hunter2" not in t for t in tail)
    assert checks.mask_tokens("kat_" + "ab" * 32) == "kat_***"


@pytest.mark.parametrize(
    ("status", "conclusion", "headline"),
    [
        ("in_progress", None, "Running on agent `a1`."),
        ("completed", "success", "Succeeded."),
        ("completed", "skipped", "Skipped: upstream_unmet: build (failed)"),
        ("completed", "timed_out", "Timed out: upstream_unmet: build (failed)"),
    ],
)
def test_headlines(status: str, conclusion: str | None, headline: str) -> None:
    body = checks.request_body(
        _view(status=status, conclusion=conclusion, agent_id="a1", detail="upstream_unmet: build (failed)"), create=True
    )
    assert str(body["output"]["summary"]).startswith(headline)  # type: ignore[index,call-overload]


def test_summary_stays_under_githubs_limit() -> None:
    body = checks.request_body(_view(status="completed", conclusion="cancelled", detail="x" * 100_000), create=True)
    assert len(str(body["output"]["summary"]).encode()) <= checks.MAX_SUMMARY_BYTES  # type: ignore[index,call-overload]


def test_conclusions_cover_every_terminal_status() -> None:
    from kici_core import planning

    assert set(checks.JOB_CONCLUSIONS) == set(planning.TERMINAL_JOB_STATUSES)
    assert checks.details_url(None, org_id="acme", run_id=RUN) is None
    assert checks.details_url("https://d/", org_id="acme", run_id=RUN) == f"https://d/r/orgs/acme/runs/{RUN}"


# ------------------------------------------------------------------------------------------------ re-runs
class World:
    def __init__(self) -> None:
        self.clock = fakes.FakeClock()
        self.inbox = fakes.FakeDeliveryInbox(fakes.FakeBlobStore(), self.clock)
        self.sources = fakes.FakeSourceStore(self.clock)
        self.reruns = fakes.FakeRunReruns()
        ids = count(1)
        self.pipeline = Pipeline(
            sources=self.sources,
            providers={
                "github": Provider(
                    lockfiles=fakes.FakeLockfileSource(),
                    changed_files=fakes.FakeChangedFilesSource(),
                    repo_url=lambda s, r, p: r,
                )
            },
            ids=lambda: f"id-{next(ids)}",
            timer=lambda: 0.0,
            reruns=self.reruns,
        )
        self.ci = self.reruns.add_run(
            "run-ci",
            routing_key="github:1",
            repo="acme/app",
            sha=SHA,
            status="failed",
            jobs={"build": "success", "test": "failed"},
        )
        self.docs = self.reruns.add_run(
            "run-docs", routing_key="github:1", repo="acme/app", sha=SHA, status="success", jobs={"build": "success"}
        )
        self.reruns.checks[JOB] = "run-ci"

    async def deliver(self, event: str, payload: dict[str, JSONValue], delivery_id: str = "d1") -> None:
        await self.sources.add_github(GitHubSource(id="s1", routing_key="github:1", name="app", app_id="1"))
        payload = {"repository": {"full_name": "acme/app"}, "sender": {"login": "dev"}, **payload}
        await self.inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id=delivery_id,
                routing_key="github:1",
                event=event,
                action="rerequested",
                source="direct",
                provider="github",
                body=json.dumps(payload).encode(),
                received_at=self.clock.now(),
            )
        )
        items = await self.inbox.claim(worker_id="w", limit=10, lease_seconds=30)
        await handling.handle_item(items[0], inbox=self.inbox, pipeline=self.pipeline)


@pytest.mark.anyio
async def test_check_run_rerequested_reruns_the_failed_jobs_once_per_delivery() -> None:
    w = World()
    check_run: dict[str, JSONValue] = {"external_id": JOB, "head_sha": SHA, "app": {"id": 1}}
    await w.deliver("check_run", {"action": "rerequested", "check_run": check_run})
    second = w.reruns.attempts["run-ci-attempt-2"]
    assert second.jobs == {"build": "success", "test": "pending"} and second.requested_by == "github:dev"
    entry = await w.inbox.get("acme", "d1")
    assert entry is not None and entry.status == "processed" and entry.matched_count == 1
    assert await w.inbox.replay("acme", "d1")  # processed again (a crash before completion): no second attempt
    items = await w.inbox.claim(worker_id="w", limit=10, lease_seconds=30)
    await handling.handle_item(items[0], inbox=w.inbox, pipeline=w.pipeline)
    assert sorted(a.attempt for a in w.reruns.attempts.values() if a.root == "run-ci") == [1, 2]


@pytest.mark.anyio
async def test_check_suite_rerequested_reruns_every_run_of_the_commit_in_full() -> None:
    w = World()
    await w.deliver("check_suite", {"action": "rerequested", "check_suite": {"head_sha": SHA, "app": {"id": 1}}})
    new = {a.root: a for a in w.reruns.attempts.values() if a.attempt == 2}
    assert set(new) == {"run-ci", "run-docs"}
    assert new["run-ci"].jobs == {"build": "pending", "test": "pending"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        (
            "check_run",
            {"action": "completed", "check_run": {"external_id": JOB, "app": {"id": 1}}},
            "check_run action 'completed' needs nothing",
        ),
        (
            "check_run",
            {"action": "rerequested", "check_run": {"external_id": JOB, "app": {"id": 2}}},
            "check_run belongs to another GitHub App",
        ),
        (
            "check_run",
            {"action": "rerequested", "check_run": {"external_id": "unknown", "app": {"id": 1}}},
            "no run of this orchestrator matches the check_run",
        ),
        (
            "check_suite",
            {"action": "rerequested", "check_suite": {"head_sha": "d" * 40, "app": {"id": 1}}},
            "no run of this orchestrator matches the check_suite",
        ),
    ],
)
async def test_rerequests_that_start_nothing_are_recorded_with_the_reason(
    event: str, payload: dict[str, JSONValue], reason: str
) -> None:
    w = World()
    await w.deliver(event, payload)
    entry = await w.inbox.get("acme", "d1")
    assert entry is not None and entry.status == "received" and entry.error_message == reason
    assert len(w.reruns.attempts) == 2


@pytest.mark.anyio
async def test_rerequest_of_a_running_run_is_refused_with_the_reason() -> None:
    w = World()
    w.ci.status = "running"
    check_run: dict[str, JSONValue] = {"external_id": JOB, "app": {"id": 1}}
    await w.deliver("check_run", {"action": "rerequested", "check_run": check_run})
    entry = await w.inbox.get("acme", "d1")
    assert entry is not None and entry.status == "processed" and entry.matched_count == 0
    assert entry.error_message == "run-ci: attempt 1 of run run-ci is still running"
