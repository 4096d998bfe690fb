"""Jobs from GitHub deliveries, end to end: ``kici-standalone`` (independent mode) behind the GitHub route, the
local GitHub API server serving lock files and installation tokens, real git repositories, and agents.

* Pull requests: a real ``kici-agent`` checks out the pull request's head commit, which exists only on the
  feature branch, for ``opened`` and for ``synchronize`` (after which the branch moved on again); the lock
  file is still read at the base branch, as the trust rule wants for a sender who is not trusted.
* ``job.dispatch`` as agents receive it: a raw-protocol agent reads the frames of a push and of a pull
  request and compares them field by field with the protocol (``source``, content hashes, the normalised
  ``event`` with its payload, matrix values, upstream results, the clone credential).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e.conftest import (
    INSTALLATION,
    ORG,
    Independent,
    boot,
    github_headers,
    github_world,
    install,
    new_delivery,
    poll,
    push_body,
    shutdown,
)
from tests.support import waits
from tests.support.agents import RawAgent
from tests.support.github_server import GitHubServer
from tests.support.orchestrator import BIN

pytestmark = pytest.mark.anyio

REPO = "acme/widgets"  # run by a real kici-agent (label "linux")
PROBE = "acme/probe"  # read by the raw-protocol agent (label "probe")
FEATURE = "feature/login"
LOCK_PATH = ".kici/kici.lock.json"
CHECKS_HASH = "5e" * 32
CI_HASH = "c1" * 32
TERMINAL = ("success", "failed", "cancelled")
VERIFY_STEP = (
    'echo "head=$(git rev-parse HEAD)"; echo "state=$(cat state.txt)"; test "$(git rev-parse HEAD)" = "$KICI_SHA"'
)


def _pr_trigger() -> dict[str, Any]:
    return {
        "_type": "pr",
        "events": ["opened", "synchronize"],
        "targetBranches": [{"type": "glob", "pattern": "main"}],
        "sourceBranches": [],
        "paths": [],
    }


def _lock(workflows: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 29,
            "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
            "contentHash": "ab" * 32,
            "workflows": workflows,
        }
    ).encode()


def _verify_lock(step: str) -> bytes:
    return _lock(
        [
            {
                "name": "pr-checks",
                "source": {"file": ".kici/workflows/checks.ts", "export": "#checks"},
                "contentHash": CHECKS_HASH,
                "compileSchemaVersion": 5,
                "triggers": [_pr_trigger()],
                "jobs": [
                    {
                        "_type": "static",
                        "name": "verify",
                        "runsOn": [{"kind": "exact", "value": "linux"}],
                        "needs": [],
                        "steps": [{"name": "verify", "run": step}],
                    }
                ],
            }
        ]
    )


BASE_LOCK = _verify_lock(VERIFY_STEP)
"""The base branch's lock file: what an untrusted pull request runs."""
HEAD_LOCK = _verify_lock("echo 'the head lock file was used'; exit 1")
"""The pull request's own lock file, which must not be trusted."""

COMPILE = {
    "_type": "static",
    "name": "compile",
    "runsOn": [{"kind": "exact", "value": "probe"}],
    "needs": [],
    "steps": [{"name": "build", "run": "make"}],
    "timeout": 600000,
    "env": {"CI": "true"},
}
TEST = {
    "_type": "static",
    "name": "test",
    "runsOn": [{"kind": "exact", "value": "probe"}],
    "needs": ["compile"],
    "matrix": {"_type": "static", "values": {"node": ["20", "22"]}},
    "steps": [{"name": "unit", "run": "npm test"}],
}
REVIEW = {
    "_type": "static",
    "name": "review",
    "runsOn": [{"kind": "exact", "value": "probe"}],
    "needs": [],
    "steps": [{"name": "lint", "run": "npm run lint"}],
}
PROBE_LOCK = _lock(
    [
        {
            "name": "ci",
            "contentHash": CI_HASH,
            "compileSchemaVersion": 5,
            "resolvedHashFiles": ["package-lock.json"],
            "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
            "jobs": [COMPILE, TEST],
        },
        {
            "name": "pr",
            "source": {"file": ".kici/workflows/pr.ts", "export": "#default[1]"},
            "contentHash": "",
            "compileSchemaVersion": 0,
            "triggers": [_pr_trigger()],
            "jobs": [REVIEW],
        },
    ]
)


# ------------------------------------------------------------------------------------------ git
def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@dataclass
class Origin:
    """A repository with ``main`` (lock file, ``state.txt``) and a feature branch."""

    path: Path
    main: str

    def commit(self, branch: str, state: str) -> str:
        git(self.path, "checkout", "-q", branch)
        (self.path / "state.txt").write_text(state + "\n")
        git(self.path, "commit", "-q", "-am", f"state {state}")
        return git(self.path, "rev-parse", "HEAD")


def make_origin(root: Path) -> Origin:
    repo = root / "widgets"
    (repo / ".kici").mkdir(parents=True)
    (repo / ".kici" / "kici.lock.json").write_bytes(BASE_LOCK)
    (repo / "state.txt").write_text("main\n")
    git(root, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    main = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", FEATURE)
    return Origin(path=repo, main=main)


def pr_body(
    repo: str,
    *,
    action: str,
    head: str,
    base: str,
    clone_url: str,
    number: int = 5,
    sender: tuple[str, int] = ("outsider", 4711),
) -> bytes:
    """A GitHub ``pull_request`` payload from ``FEATURE`` into ``main`` of ``repo`` (not a fork)."""
    owner, name = repo.split("/")
    side = {"repo": {"full_name": repo}}
    return json.dumps(
        {
            "action": action,
            "number": number,
            "pull_request": {
                "number": number,
                "title": "Login form",
                "head": {"ref": FEATURE, "sha": head, **side},
                "base": {"ref": "main", "sha": base, **side},
            },
            "repository": {
                "full_name": repo,
                "name": name,
                "owner": {"login": owner},
                "clone_url": clone_url,
                "default_branch": "main",
            },
            "sender": {"login": sender[0], "id": sender[1]},
            "installation": {"id": INSTALLATION},
        }
    ).encode()


# ------------------------------------------------------------------------------------------ the world
@dataclass
class World:
    orch: Independent
    gh: GitHubServer
    origin: Origin
    agent_token: str
    tmp: Path

    async def deliver(self, event: str, body: bytes) -> str:
        delivery = new_delivery()
        resp = await self.orch.post(f"/webhook/{ORG}/github", body, github_headers(body, delivery, event=event))
        assert resp.status_code in (200, 202), resp.text
        return delivery

    async def run(self, delivery: str, *, finished: bool) -> dict[str, Any]:
        """The delivery's single run (when ``finished``: once it is terminal)."""

        async def probe() -> dict[str, Any] | None:
            rows = await self.orch.query(
                "SELECT run_id::text, status, ref, sha, workflow_name FROM execution_runs WHERE delivery_id = %s",
                delivery,
            )
            if len(rows) != 1 or (finished and rows[0][1] not in TERMINAL):
                return None
            return dict(zip(("run_id", "status", "ref", "sha", "workflow"), rows[0], strict=True))

        return await poll(
            probe,
            90,
            lambda: f"run of {delivery}: {self.orch.proc.tail()}",
            what=f"the run of {delivery}" + (" to finish" if finished else ""),
        )

    async def log_lines(self, run_id: str) -> list[str]:
        rows = await self.orch.query(
            "SELECT c.content FROM log_chunks c WHERE c.run_id = %s AND c.step_index >= 0 ORDER BY c.id", run_id
        )
        return [line for (content,) in rows for line in (content or "").splitlines()]

    def lockfile_refs(self, repo: str) -> list[str]:
        return [r.query.get("ref", "") for r in self.gh.requests_for(f"/repos/{repo}/contents/{LOCK_PATH}")]

    @asynccontextmanager
    async def agent(self, agent_id: str, labels: str) -> AsyncIterator[None]:
        """A ``kici-agent`` process authenticated with an agent token, until the block ends."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
        env.update(
            {
                "KICI_ORCHESTRATOR_URL": self.orch.url,
                "KICI_AGENT_TOKEN": self.agent_token,
                "KICI_AGENT_ID": agent_id,
                "KICI_AGENT_LABELS": labels,
                "KICI_AGENT_WORK_DIR": str(self.tmp / "work" / agent_id),
            }
        )
        log_path = self.tmp / f"{agent_id}.log"
        with log_path.open("wb") as out:
            proc = await anyio.open_process(
                [str(BIN / "kici-agent"), "--log-level", "INFO"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        try:
            await poll(
                lambda: self._registered(agent_id),
                60,
                lambda: log_path.read_text(),
                what=f"agent {agent_id} to register",
            )
            yield
        finally:
            if proc.returncode is None:
                proc.kill()
            with waits.within(30, f"agent {agent_id} (pid {proc.pid}) to exit after SIGKILL"):
                await proc.wait()
            await proc.aclose()

    async def _registered(self, agent_id: str) -> bool | None:
        rows = await self.orch.query(
            "SELECT 1 FROM agents WHERE agent_id = %s AND connected_instance IS NOT NULL", agent_id
        )
        return True if rows else None


@pytest.fixture(scope="module")
def world(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("github-jobs")
    gh = github_world()
    try:
        origin = make_origin(tmp)
        install(gh, REPO, PROBE, content=PROBE_LOCK)
        gh.put_file(REPO, "main", LOCK_PATH, BASE_LOCK)
        orch = boot(module_db_url, gh, tmp / "standalone")
        try:
            out = anyio.run(orch.admin, "agent-token", "create", "--created-by", "e2e", "--json")
            token = json.loads(out.stdout)["token"]
            yield World(orch=orch, gh=gh, origin=origin, agent_token=token, tmp=tmp)
        finally:
            shutdown(orch)
    finally:
        gh.close()


# ------------------------------------------------------------------------------------------ pull requests
async def test_pull_request_jobs_check_out_the_head_commit_of_the_feature_branch(world: World) -> None:
    origin = world.origin
    head = origin.commit(FEATURE, "feature-1")
    assert git(origin.path, "branch", "--contains", head).strip("* ") == FEATURE  # not on main
    world.gh.put_file(REPO, head, LOCK_PATH, HEAD_LOCK)
    clone_url = origin.path.as_uri()
    async with world.agent("pr-runner", "linux"):
        opened = await world.deliver(
            "pull_request", pr_body(REPO, action="opened", head=head, base=origin.main, clone_url=clone_url)
        )
        run = await world.run(opened, finished=True)
        lines = await world.log_lines(run["run_id"])
        assert run["status"] == "success", (run, lines)
        assert f"head={head}" in lines and "state=feature-1" in lines
        assert (run["ref"], run["sha"], run["workflow"]) == (FEATURE, head, "pr-checks")
        entry = await world.orch.event(opened)
        assert entry is not None and entry["status"] == "processed" and entry["ref"] == head

        # synchronize: a new head, and the branch moved on again before the job ran
        second = origin.commit(FEATURE, "feature-2")
        origin.commit(FEATURE, "feature-3")
        world.gh.put_file(REPO, second, LOCK_PATH, HEAD_LOCK)
        synced = await world.deliver(
            "pull_request", pr_body(REPO, action="synchronize", head=second, base=origin.main, clone_url=clone_url)
        )
        run = await world.run(synced, finished=True)
        lines = await world.log_lines(run["run_id"])
        assert run["status"] == "success", (run, lines)
        assert f"head={second}" in lines and "state=feature-2" in lines
        assert (run["ref"], run["sha"]) == (FEATURE, second)
        entry = await world.orch.event(synced)
        assert entry is not None and entry["ref"] == second
    # the sender is not trusted: both deliveries used the lock file of the base branch (read once, then from the
    # cache), never the head's
    assert world.lockfile_refs(REPO) == ["main"]
    assert not any("the head lock file was used" in line for line in lines)


# ------------------------------------------------------------------------------------------ job.dispatch
def _uuid4(text: str) -> bool:
    return uuid.UUID(text).version == 4


def _frame(
    dispatch: dict[str, Any], *, run_id: str, job_id: str, ref: str, sha: str, config: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The expected ``job.dispatch`` (volatile fields taken from ``dispatch`` after checking their form)."""
    assert _uuid4(dispatch["messageId"]) and isinstance(dispatch["timestamp"], int)
    token = dispatch["token"]
    assert isinstance(token, str) and token.startswith("ghs_")
    return {
        "type": "job.dispatch",
        "messageId": dispatch["messageId"],
        "runId": run_id,
        "jobId": job_id,
        "repoUrl": f"https://github.com/{PROBE}.git",
        "ref": ref,
        "sha": sha,
        "lockFileUrl": f"https://github.com/{PROBE}/raw/{sha}/.kici/kici.lock.json",
        "jobConfig": config,
        "timestamp": dispatch["timestamp"],
        "token": token,
        "sourceAuth": {"kind": "basic", "user": "x-access-token", "secret": token},
        **extra,
    }


async def _job_ids(world: World, delivery: str) -> dict[str, tuple[str, str]]:
    rows = await world.orch.query(
        "SELECT j.job_name, r.run_id::text, j.job_id::text FROM execution_jobs j JOIN execution_runs r"
        " ON r.run_id = j.run_id WHERE r.delivery_id = %s",
        delivery,
    )
    return {name: (run_id, job_id) for name, run_id, job_id in rows}


async def test_job_dispatch_of_a_push_carries_source_hashes_event_and_upstream_results(world: World) -> None:
    sha = "9c1e4b7a2d5f8e0c3b6a9d2f5e8c1b4a7d0e3f6a"
    world.gh.put_file(PROBE, sha, LOCK_PATH, PROBE_LOCK)
    agent = await RawAgent.join(
        world.orch.proc.port, "probe-push", ["probe"], max_concurrency=2, token=world.agent_token
    )
    try:
        body = push_body(PROBE, sha=sha)
        delivery = await world.deliver("push", body)
        compile_frame = await agent.expect("job.dispatch")
        ids = await _job_ids(world, delivery)
        source = {"file": "workflows/ci.ts", "exportName": "default"}  # no workflow source: the lock file's
        event = {
            "type": "push",
            "targetBranch": "main",
            "senderUsername": "dev",
            "sourceRepo": PROBE,
            "provider": "github",
            "payload": json.loads(body),
        }
        shared = {
            "source": source,
            "contentHash": CI_HASH,
            "resolvedHashFiles": ["package-lock.json"],
            "workflowName": "ci",
            "provider": "github",
            "event": event,
        }
        run_id, job_id = ids["compile"]
        assert compile_frame == _frame(
            compile_frame,
            run_id=run_id,
            job_id=job_id,
            ref="main",
            sha=sha,
            config={**COMPILE, **shared, "baseJobName": "compile"},
        )
        await agent.ack(compile_frame)
        await agent.status(compile_frame, "running")
        await agent.status(compile_frame, "success", {"exitCode": 0, "outputs": {"artifact": "dist.tgz"}})

        children = [await agent.expect("job.dispatch"), await agent.expect("job.dispatch")]
        for frame in children:
            values = {"node": frame["jobConfig"]["matrixValues"]["node"]}
            name = f"test ({values['node']})"
            run_id, job_id = ids[name]
            config = {**TEST, **shared, "name": name, "baseJobName": "test", "matrixValues": values}
            upstream = {
                "upstreamJobOutputs": {"compile": {"artifact": "dist.tgz"}},
                "upstreamJobStatuses": {"compile": "success"},
            }
            assert frame == _frame(frame, run_id=run_id, job_id=job_id, ref="main", sha=sha, config=config, **upstream)
        assert sorted(f["jobConfig"]["name"] for f in children) == ["test (20)", "test (22)"]
        for frame in children:
            await agent.run_to_success(frame)
        stored = await world.orch.query(
            "SELECT count(*) FROM execution_jobs j JOIN execution_runs r ON r.run_id = j.run_id"
            " WHERE r.delivery_id = %s AND (j.job_config ? 'event')",
            delivery,
        )
        assert stored == [(0,)]  # the payload lives once per run, not in each job row
    finally:
        await agent.close()


async def test_job_dispatch_of_a_pull_request_carries_the_head_and_the_pull_request_event(world: World) -> None:
    head, base = "b7" * 20, "a1" * 20
    agent = await RawAgent.join(world.orch.proc.port, "probe-pr", ["probe"], token=world.agent_token)
    try:
        body = pr_body(PROBE, action="opened", head=head, base=base, clone_url=f"https://github.com/{PROBE}.git")
        delivery = await world.deliver("pull_request", body)
        frame = await agent.expect("job.dispatch")
        run_id, job_id = (await _job_ids(world, delivery))["review"]
        event = {
            "type": "pull_request",
            "action": "opened",
            "targetBranch": "main",
            "sourceBranch": FEATURE,
            "baseBranch": "main",
            "isForkPR": False,
            "senderUsername": "outsider",
            "senderUserId": "4711",
            "sourceRepo": PROBE,
            "provider": "github",
            "payload": json.loads(body),
        }
        config = {
            **REVIEW,
            "source": {"file": "workflows/pr.ts", "exportName": "default"},
            "workflowName": "pr",
            "baseJobName": "review",
            "provider": "github",
            "event": event,
        }  # "" content hash: no drift check
        assert frame == _frame(frame, run_id=run_id, job_id=job_id, ref=FEATURE, sha=head, config=config)
        await agent.run_to_success(frame)
    finally:
        await agent.close()
    assert world.lockfile_refs(PROBE)[-1] == "main"
