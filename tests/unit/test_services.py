"""The processing pipeline over fakes: every outcome, retries, idempotent completion."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from itertools import count

import pytest

from kici_core import errors, handling, new_runs, platform_events
from kici_core.delivery_records import Delivery
from kici_core.jsontypes import JSONValue
from kici_core.lockfile import SourceRef
from kici_core.pipeline import Pipeline, Provider
from kici_core.source_records import GitHubSource, RepoSource
from kici_core.testing import fakes

pytestmark = pytest.mark.anyio

SHA = "a" * 40
LOCK = {
    "schemaVersion": 29,
    "source": {"file": ".kici/workflows/ci.ts"},
    "contentHash": "x",
    "workflows": [
        {
            "name": "ci",
            "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
            "jobs": [
                {
                    "_type": "static",
                    "name": "lint",
                    "runsOn": [{"kind": "exact", "value": "linux"}],
                    "needs": [],
                    "steps": [{"name": "lint", "run": "echo lint"}],
                },
                {
                    "_type": "static",
                    "name": "test",
                    "needs": ["lint"],
                    "steps": [{"name": "t", "run": "true"}],
                    "matrix": {"_type": "static", "values": {"py": ["3.11", "3.12"]}},
                },
            ],
        },
        {
            "name": "docs",
            "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": ["docs/**"]}],
            "jobs": [{"_type": "static", "name": "build", "needs": [], "steps": [{"name": "b", "run": "true"}]}],
        },
        {
            "name": "release",
            "triggers": [{"_type": "tag", "patterns": [{"type": "glob", "pattern": "v*"}]}],
            "jobs": [{"_type": "static", "name": "r", "needs": [], "steps": []}],
        },
    ],
}


def push_payload(ref: str = "refs/heads/main", before: str = "b" * 40) -> dict[str, JSONValue]:
    return {
        "ref": ref,
        "before": before,
        "after": SHA,
        "repository": {
            "full_name": "acme/app",
            "default_branch": "main",
            "clone_url": "https://github.com/acme/app.git",
        },
    }


class World:
    def __init__(self) -> None:
        self.clock = fakes.FakeClock()
        self.blobs = fakes.FakeBlobStore()
        self.inbox = fakes.FakeDeliveryInbox(self.blobs, self.clock)
        self.sources = fakes.FakeSourceStore(self.clock)
        self.lockfiles = fakes.FakeLockfileSource()
        self.changes = fakes.FakeChangedFilesSource()
        self.platform = fakes.FakePlatformLink()
        ids = count(1)

        def url(source: RepoSource, repo: str, payload: Mapping[str, JSONValue]) -> str:
            return f"https://github.com/{repo}.git"

        self.pipeline = Pipeline(
            sources=self.sources,
            providers={"github": Provider(lockfiles=self.lockfiles, changed_files=self.changes, repo_url=url)},
            ids=lambda: f"id-{next(ids)}",
            timer=lambda: 0.0,
        )

    async def setup(self) -> None:
        await self.sources.add_github(GitHubSource(id="s1", routing_key="github:1", name="app", app_id="1"))
        self.lockfiles.files[("acme/app", SHA)] = json.dumps(LOCK).encode()

    async def deliver(self, payload: dict[str, JSONValue], event: str = "push", delivery_id: str = "d1") -> None:
        await self.inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id=delivery_id,
                routing_key="github:1",
                event=event,
                action=None,
                source="direct",
                provider="github",
                body=json.dumps(payload).encode(),
                received_at=self.clock.now(),
            )
        )

    async def run_once(self) -> list[str] | None:
        items = await self.inbox.claim(worker_id="w", limit=10, lease_seconds=30)
        assert len(items) == 1
        return await handling.handle_item(items[0], inbox=self.inbox, pipeline=self.pipeline, platform=self.platform)


async def test_push_creates_runs_with_matrix_and_needs_and_trace() -> None:
    w = World()
    await w.setup()
    w.changes.files[("acme/app", SHA)] = ["src/main.py"]
    await w.deliver(push_payload())
    run_ids = await w.run_once()
    assert run_ids is not None and len(run_ids) == 1
    run = w.inbox.runs[run_ids[0]].run
    assert run.workflow_name == "ci" and run.sha == SHA and run.ref == "main"
    names = {j.name: j for j in run.jobs}
    assert list(names) == ["lint", "test (3.11)", "test (3.12)"]
    assert [j.name for j in run.jobs if j.runnable] == ["lint"]
    assert all(e.upstream_name == "lint" for j in run.jobs if j.base_name == "test" for e in j.needs)
    assert [j.name for j in w.inbox.queue] == ["lint"]
    lint = names["lint"]
    assert lint.job_config["steps"] == [{"name": "lint", "run": "echo lint"}]
    entry = await w.inbox.get("acme", "d1")
    assert entry is not None and entry.status == "processed" and entry.matched_count == 1
    assert entry.run_id == run_ids[0] and entry.repo_identifier == "acme/app"
    trace = entry.decision_trace
    assert isinstance(trace, dict)
    docs = next(d for d in trace["decisions"] if d["workflowName"] == "docs")  # type: ignore[union-attr]
    assert docs["matched"] is False  # changed files did not touch docs/**
    assert w.changes.calls == [("acme/app", "b" * 40, SHA, None)]
    assert w.platform.published and isinstance(w.platform.published[0], platform_events.DeliveryDecided)


async def test_completing_twice_creates_no_second_run() -> None:
    w = World()
    await w.setup()
    await w.deliver(push_payload())
    first = await w.run_once()
    assert await w.inbox.replay("acme", "d1")
    second = await w.run_once()
    assert first == second and len(w.inbox.runs) == 1 and len(w.inbox.queue) == 1


async def test_outcomes_missing_corrupt_unsupported() -> None:
    w = World()
    await w.setup()
    await w.deliver(push_payload(), delivery_id="d1")
    w.lockfiles.files[("acme/app", SHA)] = b'{"schemaVersion": 29, "workflows": [{"name": 1}]}'
    await w.run_once()
    e = await w.inbox.get("acme", "d1")
    assert e is not None and e.status == "lockfile_corrupt" and e.error_message
    w.lockfiles.files.clear()
    await w.deliver(push_payload(), delivery_id="d2")
    await w.run_once()
    e = await w.inbox.get("acme", "d2")
    assert e is not None and e.status == "lockfile_missing" and e.ref == SHA
    await w.deliver({"zen": "hi"}, event="ping", delivery_id="d3")
    await w.run_once()
    e = await w.inbox.get("acme", "d3")
    assert e is not None and e.status == "received"


async def test_tag_push_matches_tag_trigger_not_push() -> None:
    w = World()
    await w.setup()
    await w.deliver(push_payload(ref="refs/tags/v1.2"))
    run_ids = await w.run_once()
    assert run_ids is not None
    assert [w.inbox.runs[r].run.workflow_name for r in run_ids] == ["release"]


async def test_upstream_outage_retries_with_backoff_then_parks() -> None:
    w = World()
    await w.setup()
    w.lockfiles.fail_with = errors.UpstreamUnavailable("GitHub answered 502")
    await w.deliver(push_payload())
    assert await w.run_once() is None
    e = await w.inbox.get("acme", "d1")
    assert e is not None and e.status == "received" and "502" in (e.error_message or "")
    assert await w.inbox.claim(worker_id="w", limit=1, lease_seconds=30) == []  # backing off
    for _ in range(handling.MAX_ATTEMPTS - 1):
        w.clock.advance(400)
        items = await w.inbox.claim(worker_id="w", limit=1, lease_seconds=30)
        assert len(items) == 1
        await handling.handle_item(items[0], inbox=w.inbox, pipeline=w.pipeline)
    e = await w.inbox.get("acme", "d1")
    assert e is not None and e.status == "failed" and await w.inbox.depth() == 0
    # the outage is over: replay processes it
    w.lockfiles.fail_with = None
    assert await w.inbox.replay("acme", "d1")
    assert await w.run_once()
    e = await w.inbox.get("acme", "d1")
    assert e is not None and e.status == "processed"


async def test_expired_lease_is_claimed_again() -> None:
    w = World()
    await w.setup()
    await w.deliver(push_payload())
    (item,) = await w.inbox.claim(worker_id="w1", limit=1, lease_seconds=30)
    assert await w.inbox.claim(worker_id="w2", limit=1, lease_seconds=30) == []
    w.clock.advance(timedelta(seconds=31).total_seconds())
    (again,) = await w.inbox.claim(worker_id="w2", limit=1, lease_seconds=30)
    assert again.delivery_id == item.delivery_id and again.attempts == 2


def test_retry_delay_grows_and_stops() -> None:
    delays = [handling.retry_delay(n) for n in range(1, handling.MAX_ATTEMPTS + 1)]
    assert delays[-1] is None
    finite = [d for d in delays if d is not None]
    assert finite == sorted(finite) and finite[0] >= 1


async def test_each_new_run_gets_a_payload_copy_and_a_failed_copy_is_reported() -> None:
    w = World()
    await w.setup()
    await w.deliver(push_payload())
    items = await w.inbox.claim(worker_id="w", limit=1, lease_seconds=30)
    copies = fakes.FakeBlobStore()
    run_ids = await handling.handle_item(items[0], inbox=w.inbox, pipeline=w.pipeline, blobs=copies)
    assert run_ids is not None and len(run_ids) == 1
    stored = copies.objects[f"executions/{run_ids[0]}/webhook-payload.json"]
    assert json.loads(stored) == push_payload()
    assert copies.durable[f"executions/{run_ids[0]}/webhook-payload.json"] is False  # the event log keeps the original

    await w.deliver(push_payload(), delivery_id="d2")
    (item,) = await w.inbox.claim(worker_id="w", limit=1, lease_seconds=30)
    copies.fail_puts = True
    reported: list[str] = []

    async def report(run_id: str, exc: BaseException) -> None:
        reported.append(run_id)

    run_ids = await handling.handle_item(item, inbox=w.inbox, pipeline=w.pipeline, blobs=copies, on_copy_error=report)
    assert run_ids is not None and reported == run_ids  # the run exists; only its copy is missing
    entry = await w.inbox.get("acme", "d2")
    assert entry is not None and entry.status == "processed"


HEAD = "c" * 40
PR_LOCK = {
    "schemaVersion": 29,
    "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
    "contentHash": "f" * 64,
    "workflows": [
        {
            "name": "checks",
            "source": {"file": ".kici/workflows/checks.ts", "export": "#checks[1]"},
            "contentHash": "9" * 64,
            "compileSchemaVersion": 5,
            "resolvedHashFiles": ["package-lock.json"],
            "triggers": [
                {
                    "_type": "pr",
                    "events": ["opened", "synchronize"],
                    "targetBranches": [{"type": "glob", "pattern": "main"}],
                    "sourceBranches": [],
                    "paths": [],
                }
            ],
            "jobs": [
                {
                    "_type": "static",
                    "name": "unit",
                    "runsOn": [{"kind": "exact", "value": "linux"}],
                    "needs": [],
                    "steps": [{"name": "t", "run": "true"}],
                }
            ],
        },
        {
            "name": "nightly",
            "contentHash": "",
            "compileSchemaVersion": 0,
            "triggers": [
                {"_type": "pr", "events": ["opened"], "targetBranches": [], "sourceBranches": [], "paths": []}
            ],
            "jobs": [{"_type": "static", "name": "n", "needs": [], "steps": []}],
        },
    ],
}


def pr_payload(action: str = "opened") -> dict[str, JSONValue]:
    return {
        "action": action,
        "number": 7,
        "pull_request": {
            "number": 7,
            "base": {"ref": "main", "sha": "b" * 40, "repo": {"full_name": "acme/app"}},
            "head": {"ref": "feature/x", "sha": HEAD, "repo": {"full_name": "acme/app"}},
        },
        "repository": {"full_name": "acme/app", "default_branch": "main"},
        "sender": {"login": "outsider", "id": 9},
    }


async def test_pull_request_runs_the_head_commit_with_the_base_lock_file() -> None:
    w = World()
    await w.setup()
    w.lockfiles.files[("acme/app", "main")] = json.dumps(PR_LOCK).encode()
    w.lockfiles.files[("acme/app", HEAD)] = b'{"schemaVersion": 29, "workflows": []}'  # never read
    await w.deliver(pr_payload(), event="pull_request")
    run_ids = await w.run_once()
    assert w.lockfiles.fetches == [("acme/app", "main")]  # untrusted sender: the base branch's lock file
    assert run_ids is not None and len(run_ids) == 2
    runs = {w.inbox.runs[r].run.workflow_name: w.inbox.runs[r].run for r in run_ids}
    checks = runs["checks"]
    assert (checks.ref, checks.sha) == ("feature/x", HEAD)
    entry = await w.inbox.get("acme", "d1")
    assert entry is not None and entry.status == "processed" and entry.ref == HEAD
    decided = w.platform.published[0]
    assert isinstance(decided, platform_events.DeliveryDecided) and decided.ref == HEAD
    config = checks.jobs[0].job_config
    assert config["source"] == {"file": "workflows/checks.ts", "exportName": "checks"}
    assert config["contentHash"] == "9" * 64 and config["resolvedHashFiles"] == ["package-lock.json"]
    assert "event" not in config  # stored once per run, not per job
    assert checks.event is not None and checks.event["sourceBranch"] == "feature/x"
    assert checks.event["payload"] == pr_payload() and checks.event["provider"] == "github"
    assert runs["nightly"].event == checks.event
    # no workflow source: the lock file's; an empty content hash means no drift check
    nightly = runs["nightly"].jobs[0].job_config
    assert nightly["source"] == {"file": "workflows/ci.ts", "exportName": "default"}
    assert "contentHash" not in nightly and "resolvedHashFiles" not in nightly


async def test_pull_request_without_a_base_lock_file_names_where_it_looked() -> None:
    w = World()
    await w.setup()
    await w.deliver(pr_payload(), event="pull_request")
    await w.run_once()
    entry = await w.inbox.get("acme", "d1")
    assert entry is not None and entry.status == "lockfile_missing"
    assert entry.ref == HEAD and entry.error_message == "no .kici/kici.lock.json at main"


def test_job_source_forms() -> None:
    assert new_runs.job_source(SourceRef(file=".kici/workflows/ci.ts", export="#default")) == {
        "file": "workflows/ci.ts",
        "exportName": "default",
    }
    assert new_runs.job_source(SourceRef(file="./.kici/a/b.ts", export="#all[2]")) == {
        "file": "a/b.ts",
        "exportName": "all",
    }
    assert new_runs.job_source(SourceRef(file=".kici/workflows", export=None)) == {"file": "workflows"}


async def test_deliveries_of_one_lock_file_convert_it_once_and_each_run_gets_its_own_job_config() -> None:
    w = World()
    w.pipeline.registrations = fakes.FakeRegistrationStore()
    await w.setup()
    w.changes.files[("acme/app", SHA)] = ["src/main.py"]
    await w.deliver(push_payload(), delivery_id="d1")
    await w.deliver(push_payload(), delivery_id="d2")
    items = await w.inbox.claim(worker_id="w", limit=10, lease_seconds=30)
    outs = [await w.pipeline.process(item, await w.inbox.payload(item)) for item in items]
    assert w.pipeline.parsed.parses == 1
    first, second = ([j.job_config for j in out.runs[0].jobs] for out in outs)
    assert first == second and first[0]["steps"] == [{"name": "lint", "run": "echo lint"}]
    assert first[0] is not second[0]  # a run's job config is its own object, even from one cached conversion
    first[0]["name"] = "changed"
    assert second[0]["name"] == "lint"
    regs = [out.registration for out in outs]
    assert regs[0] is not None and regs[1] is not None
    assert [r.delivery_id for r in regs[0].workflows] == ["d1"] * 3
    assert [r.workflow for r in regs[0].workflows] == [r.workflow for r in regs[1].workflows]
    assert regs[0].workflows[0].workflow["name"] == "ci"
