"""GitHub check runs and re-runs end to end: ``kici-standalone`` (independent mode) with a GitHub App source, the
local GitHub server with its Checks API, a real ``kici-agent`` and a real git repository it clones (the push
payload's ``clone_url`` is a ``file://`` URL; the lock file comes from the GitHub server at the pushed commit).

One orchestrator, agent and repository serve the whole module; each test pushes its own commit (or re-runs the
first push's runs), so check runs of different tests live on different commits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e.conftest import (
    APP_ID,
    INSTALLATION,
    LOCKFILE_PATH,
    ORG,
    Independent,
    boot,
    github_headers,
    github_world,
    poll,
    shutdown,
)
from tests.support.github_server import GitHubServer

pytestmark = pytest.mark.anyio

REPO = "acme/checked"
DASHBOARD = "https://dash.example.com"
LEAKY = "ghs_" + "Q" * 36
"""A token-shaped string the failing step prints: it must reach GitHub masked."""
BOUND = 90.0
TERMINAL = ("success", "failed", "cancelled")


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _job(
    name: str, run: str, *, needs: tuple[str, ...] = (), matrix: dict[str, Any] | None = None, step: str = "step"
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "exact", "value": "linux"}],
        "needs": [{"name": n} for n in needs],
        "steps": [{"name": step, "run": run}],
    }
    if matrix is not None:
        job["matrix"] = {"_type": "static", "values": matrix}
    return job


def _lockfile(gate: Path) -> bytes:
    def push(*branches: str) -> dict[str, Any]:
        return {"_type": "push", "branches": [{"type": "glob", "pattern": b} for b in branches], "paths": []}

    failing = 'for i in $(seq 1 40); do echo "lint line $i"; done; echo "token ' + LEAKY + '"; exit 3'
    workflows = [
        {
            "name": "ci",
            "triggers": [push("main", "outage"), {"_type": "pr", "events": ["opened"]}],
            "jobs": [
                _job("build", "echo building"),
                _job("test", "echo testing", needs=("build",), matrix={"os": ["a", "b"]}),
            ],
        },
        {
            "name": "lint",
            "triggers": [push("main")],
            "jobs": [_job("prepare", "echo prepared"), _job("check", failing, needs=("prepare",), step="style")],
        },
        {
            "name": "gate",
            "triggers": [push("gate")],
            "jobs": [
                _job("wait", f"while [ ! -f {gate} ]; do sleep 0.05; done; echo released"),
                _job("after", "echo after", needs=("wait",)),
            ],
        },
    ]
    return json.dumps(
        {"schemaVersion": 29, "source": {"file": ".kici/workflows/ci.ts"}, "contentHash": "c", "workflows": workflows}
    ).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    """The module's orchestrator, agent, repository and GitHub."""

    w: Independent
    gh: GitHubServer
    repo_dir: Path
    gate: Path
    shas: dict[str, str]
    agent: subprocess.Popen[bytes] | None = None
    first: dict[str, Any] = field(default_factory=dict)

    def payload(self, **extra: Any) -> dict[str, Any]:
        return {
            "repository": {
                "full_name": REPO,
                "name": "checked",
                "owner": {"login": "acme"},
                "clone_url": self.repo_dir.as_uri(),
                "default_branch": "main",
            },
            "sender": {"login": "dev", "id": 7},
            "installation": {"id": INSTALLATION},
            **extra,
        }

    async def deliver(self, event: str, body: dict[str, Any]) -> str:
        delivery = str(uuid.uuid4())
        raw = json.dumps(body).encode()
        resp = await self.w.post(f"/webhook/{ORG}/github", raw, github_headers(raw, delivery, event=event))
        assert resp.status_code in (200, 202), resp.text
        return delivery

    async def push(self, branch: str) -> str:
        sha = self.shas[branch]
        return await self.deliver(
            "push",
            self.payload(ref=f"refs/heads/{branch}", before="0" * 40, after=sha, head_commit={"id": sha}, commits=[]),
        )

    async def runs_done(self, delivery: str, count: int) -> dict[str, dict[str, Any]]:
        """The delivery's runs by workflow once all ``count`` have ended."""

        async def probe() -> dict[str, dict[str, Any]] | None:
            rows = await self.w.query(
                "SELECT workflow_name, run_id::text, status FROM execution_runs "
                "WHERE delivery_id = %s AND original_run_id IS NULL",
                delivery,
            )
            done = {r[0]: {"run_id": r[1], "status": r[2]} for r in rows}
            return done if len(done) == count and all(r["status"] in TERMINAL for r in done.values()) else None

        return await poll(
            probe,
            BOUND,
            lambda: f"runs of {delivery}\n{self.w.proc.tail()}",
            what=f"{count} run(s) of {delivery} to finish",
        )

    async def attempt_done(self, root: str, attempt: int) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            rows = await self.w.query(
                "SELECT run_id::text, status FROM execution_runs WHERE original_run_id = %s AND attempt = %s",
                root,
                attempt,
            )
            return {"run_id": rows[0][0], "status": rows[0][1]} if rows and rows[0][1] in TERMINAL else None

        return await poll(
            probe,
            BOUND,
            lambda: f"attempt {attempt} of {root}\n{self.w.proc.tail()}",
            what=f"attempt {attempt} of run {root} to finish",
        )

    async def checks_settled(self, sha: str, names: set[str], *, count: int | None = None) -> dict[str, dict[str, Any]]:
        """The newest check run per name on ``sha`` once every one of ``names`` is completed on GitHub (and,
        with ``count``, that many check runs exist) and nothing is left to send."""

        async def probe() -> dict[str, dict[str, Any]] | None:
            runs = self.gh.check_runs(REPO, sha)
            newest = {r["name"]: r for r in runs}
            if set(newest) != names or any(r["status"] != "completed" for r in newest.values()):
                return None
            if count is not None and len(runs) != count:
                return None
            due = await self.w.query(
                "SELECT count(*) FROM github_check_runs WHERE head_sha = %s AND sent_version < version", sha
            )
            return newest if due[0][0] == 0 else None

        return await poll(
            probe,
            BOUND,
            lambda: (
                f"check runs at {sha}: "
                f"{[(r['name'], r['status']) for r in self.gh.check_runs(REPO, sha)]}\n{self.w.proc.tail()}"
            ),
            what=f"check runs {sorted(names)} at {sha} to complete on GitHub",
        )

    def assert_in_order(self, sha: str) -> None:
        """Every check run on ``sha`` went through its states forwards only and ended completed."""
        rank = {"queued": 0, "in_progress": 1, "completed": 2}
        for run in self.gh.check_runs(REPO, sha):
            seen = [h["status"] for h in self.gh.check_history(REPO, run["name"]) if h["id"] == run["id"]]
            assert seen == sorted(seen, key=rank.__getitem__), (run["name"], seen)
            assert seen[-1] == "completed", (run["name"], seen)


def _start_agent(port: int, work: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env.update(
        {
            "KICI_ORCHESTRATOR_URL": f"ws://127.0.0.1:{port}/ws",
            "KICI_AGENT_ID": "checks-agent",
            "KICI_AGENT_LABELS": "linux",
            "KICI_AGENT_MAX_CONCURRENCY": "3",
            "KICI_AGENT_WORK_DIR": str(work),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "kici_runtime.agent", "--log-level", "WARNING"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def world(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("checks")
    gate = root / "gate-open"
    lock = _lockfile(gate)
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    (repo / LOCKFILE_PATH).write_bytes(lock)
    _git(root, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    shas = {"main": _git(repo, "rev-parse", "HEAD")}
    for branch in ("feature", "outage", "gate"):
        _git(repo, "checkout", "-q", "-b", branch, "main")
        (repo / f"{branch}.txt").write_text(branch)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", branch)
        shas[branch] = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "main")
    gh = github_world()
    gh.add_installation(INSTALLATION, app_id=APP_ID, repos=[REPO])
    for ref in [*shas.values(), "main"]:
        gh.put_file(REPO, ref, LOCKFILE_PATH, lock)
    gh.set_branch(REPO, "main", shas["main"], default=True)
    port = _free_port()
    try:
        w = boot(
            module_db_url, gh, root / "data", KICI_AGENT_AUTH="none", KICI_PORT=str(port), KICI_DASHBOARD_URL=DASHBOARD
        )
        world = World(w=w, gh=gh, repo_dir=repo, gate=gate, shas=shas)
        world.agent = _start_agent(port, root / "work")
        try:
            yield world
        finally:
            if world.agent.poll() is None:
                world.agent.send_signal(signal.SIGKILL)
            world.agent.wait(30)
            shutdown(w)
    finally:
        gh.close()


@pytest.fixture(scope="module")
async def main_push(world: World) -> dict[str, Any]:
    """The push to ``main`` (workflows ``ci`` and ``lint``), finished, with its check runs settled on GitHub."""
    delivery = await world.push("main")
    runs = await world.runs_done(delivery, 2)
    names = {
        "kici/ci",
        "kici/ci/job/build",
        "kici/ci/job/test (a)",
        "kici/ci/job/test (b)",
        "kici/lint",
        "kici/lint/job/prepare",
        "kici/lint/job/check",
    }
    checks = await world.checks_settled(world.shas["main"], names)
    return {"delivery": delivery, "runs": runs, "checks": checks}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------------------------ lifecycle
async def test_push_run_reports_every_workflow_and_job_to_its_conclusion(
    world: World, main_push: dict[str, Any]
) -> None:
    sha, checks, runs = world.shas["main"], main_push["checks"], main_push["runs"]
    assert runs["ci"]["status"] == "success" and runs["lint"]["status"] == "failed"
    jobs = dict(
        await world.w.query(
            "SELECT r.workflow_name || '/' || j.job_name, j.job_id::text FROM execution_jobs j "
            "JOIN execution_runs r USING (run_id) WHERE r.delivery_id = %s",
            main_push["delivery"],
        )
    )
    for name, check in checks.items():
        assert check["head_sha"] == sha and check["app"]["id"] == int(APP_ID)
        workflow, _, job = name.removeprefix("kici/").partition("/job/")
        run_id = runs[workflow]["run_id"]
        assert check["external_id"] == (jobs[f"{workflow}/{job}"] if job else run_id)
        assert check["output"]["title"] == f"KiCI: {workflow}" + (f"/{job}" if job else "")
        assert f"Trace: {main_push['delivery']} | Run: {run_id}" in check["output"]["summary"]
        assert check["details_url"] == f"{DASHBOARD}/r/orgs/{ORG}/runs/{run_id}"
        assert check["completed_at"]
    assert {n: c["conclusion"] for n, c in checks.items()} == {
        "kici/ci": "success",
        "kici/ci/job/build": "success",
        "kici/ci/job/test (a)": "success",
        "kici/ci/job/test (b)": "success",
        "kici/lint": "failure",
        "kici/lint/job/prepare": "success",
        "kici/lint/job/check": "failure",
    }
    assert checks["kici/ci/job/build"]["started_at"]
    world.assert_in_order(sha)
    assert len(world.gh.check_runs(REPO, sha)) == len(checks)  # one check run each: nothing created twice


async def test_failed_job_check_names_the_step_and_shows_the_masked_log_tail(
    world: World, main_push: dict[str, Any]
) -> None:
    summary = main_push["checks"]["kici/lint/job/check"]["output"]["summary"]
    assert summary.startswith("Failed")
    assert "**Failing step:** `style` (step 0, exit code 3)" in summary
    assert "lint line 40" in summary and "lint line 5\n" not in summary  # the end of the log, bounded
    assert LEAKY not in summary and "token ghs_***" in summary
    assert main_push["checks"]["kici/lint"]["output"]["summary"].startswith("Failed")
    metrics = await world.w.metrics()
    assert metrics.get('kici_github_check_runs_total{result="created"}', 0) >= 7


async def test_pull_request_checks_land_on_the_head_commit(world: World) -> None:
    head, base = world.shas["feature"], world.shas["main"]
    pr = {
        "number": 5,
        "head": {"ref": "feature", "sha": head, "repo": {"full_name": REPO}},
        "base": {"ref": "main", "sha": base, "repo": {"full_name": REPO}},
    }
    delivery = await world.deliver("pull_request", world.payload(action="opened", number=5, pull_request=pr))
    runs = await world.runs_done(delivery, 1)
    assert runs["ci"]["status"] == "success"
    names = {"kici/ci", "kici/ci/job/build", "kici/ci/job/test (a)", "kici/ci/job/test (b)"}
    checks = await world.checks_settled(head, names)
    assert all(c["conclusion"] == "success" for c in checks.values())
    assert all(f"Run: {runs['ci']['run_id']}" in c["output"]["summary"] for c in checks.values())
    world.assert_in_order(head)


# ------------------------------------------------------------------------------------------------ reliability
async def test_github_outage_delays_check_updates_and_runs_show_says_why(world: World) -> None:
    gh, sha = world.gh, world.shas["outage"]
    gh.fail(f"/repos/{REPO}/check-runs*", 502, times=10_000, message="Server Error")
    before = (await world.w.metrics()).get('kici_github_check_runs_total{result="retried"}', 0)
    delivery = await world.push("outage")
    runs = await world.runs_done(delivery, 1)
    run_id = runs["ci"]["run_id"]

    async def stuck() -> str | None:
        out = (await world.w.admin("runs", "show", run_id)).stdout
        return out if "GitHub checks STUCK" in out else None

    shown = await poll(stuck, BOUND, world.w.proc.tail)
    assert "HTTP 502 (Server Error)" in shown and "check run(s) not updated on GitHub" in shown
    assert gh.check_runs(REPO, sha) == []
    gh.clear_faults()
    gh.fail(
        f"/repos/{REPO}/check-runs*",
        403,
        times=2,
        headers={"Retry-After": "1"},
        message="You have exceeded a secondary rate limit",
    )
    names = {"kici/ci", "kici/ci/job/build", "kici/ci/job/test (a)", "kici/ci/job/test (b)"}
    checks = await world.checks_settled(sha, names, count=4)
    assert all(c["conclusion"] == "success" for c in checks.values())
    world.assert_in_order(sha)
    assert gh.fault_hits(403) == 2
    after = await world.w.metrics()
    assert after['kici_github_check_runs_total{result="retried"}'] - before >= 6
    out = (await world.w.admin("runs", "show", run_id)).stdout
    assert "STUCK" not in out and "GitHub checks: 4 check run(s) up to date" in out


async def test_orchestrator_restart_between_job_start_and_finish(world: World) -> None:
    sha = world.shas["gate"]
    delivery = await world.push("gate")

    async def waiting() -> dict[str, dict[str, Any]] | None:
        newest = {r["name"]: r for r in world.gh.check_runs(REPO, sha)}
        states = {name: newest[name]["status"] for name in newest}
        want = {"kici/gate": "in_progress", "kici/gate/job/wait": "in_progress", "kici/gate/job/after": "queued"}
        return newest if states == want else None

    newest = await poll(waiting, BOUND, lambda: f"{world.gh.check_runs(REPO, sha)}\n{world.w.proc.tail()}")
    assert newest["kici/gate/job/after"]["output"]["summary"].startswith("Waiting for agent...")
    assert newest["kici/gate/job/wait"]["output"]["summary"].startswith("Running on agent `checks-agent`")
    assert world.w.proc.stop() in (0, -15)
    world.gate.write_text("open")  # the job finishes while the orchestrator is down
    await anyio.to_thread.run_sync(world.w.proc.start)
    runs = await world.runs_done(delivery, 1)
    assert runs["gate"]["status"] == "success"
    checks = await world.checks_settled(sha, {"kici/gate", "kici/gate/job/wait", "kici/gate/job/after"}, count=3)
    assert all(c["conclusion"] == "success" for c in checks.values())
    world.assert_in_order(sha)


# ------------------------------------------------------------------------------------------------ re-runs
async def test_rerequested_check_run_and_check_suite_start_new_attempts(
    world: World, main_push: dict[str, Any]
) -> None:
    sha, runs = world.shas["main"], main_push["runs"]
    failed = main_push["checks"]["kici/lint/job/check"]
    app = {"id": int(APP_ID), "slug": "kici-e2e"}
    await world.deliver(
        "check_run",
        world.payload(
            action="rerequested",
            check_run={
                "id": failed["id"],
                "name": failed["name"],
                "head_sha": sha,
                "external_id": failed["external_id"],
                "app": app,
                "check_suite": {"id": 1, "head_sha": sha},
            },
        ),
    )
    lint_root = runs["lint"]["run_id"]
    second = await world.attempt_done(lint_root, 2)
    assert second["status"] == "failed"
    jobs = dict(
        await world.w.query("SELECT job_name, error_message FROM execution_jobs WHERE run_id = %s", second["run_id"])
    )
    assert jobs["prepare"] == "succeeded in attempt 1"  # kept: only the failed job ran again
    events = await world.w.query(
        "SELECT a.event = b.event FROM execution_run_events a, execution_run_events b "
        "WHERE a.run_id = %s AND b.run_id = %s",
        lint_root,
        second["run_id"],
    )
    assert events == [(True,)]  # the same triggering event reaches the new attempt's jobs
    names = {
        "kici/ci",
        "kici/ci/job/build",
        "kici/ci/job/test (a)",
        "kici/ci/job/test (b)",
        "kici/lint",
        "kici/lint/job/prepare",
        "kici/lint/job/check",
    }
    checks = await world.checks_settled(sha, names, count=9)  # a new workflow and job check run for lint
    assert checks["kici/lint"]["external_id"] == second["run_id"]
    assert "Attempt: 2" in checks["kici/lint/job/check"]["output"]["summary"]

    await world.deliver(
        "check_suite",
        world.payload(action="rerequested", check_suite={"id": 1, "head_sha": sha, "head_branch": "main", "app": app}),
    )
    ci = await world.attempt_done(runs["ci"]["run_id"], 2)
    lint = await world.attempt_done(lint_root, 3)
    assert (ci["status"], lint["status"]) == ("success", "failed")
    checks = await world.checks_settled(sha, names, count=9 + 4 + 3)  # every job of both workflows again
    assert checks["kici/ci"]["external_id"] == ci["run_id"] and checks["kici/lint"]["external_id"] == lint["run_id"]
    world.assert_in_order(sha)


async def test_cli_rerun_failed_only_lists_attempts(world: World, main_push: dict[str, Any]) -> None:
    lint_root, ci_root = main_push["runs"]["lint"]["run_id"], main_push["runs"]["ci"]["run_id"]
    latest = await world.w.query(
        "SELECT max(attempt) FROM execution_runs WHERE run_id = %s OR original_run_id = %s", lint_root, lint_root
    )
    attempt = int(latest[0][0]) + 1
    out = (await world.w.admin("runs", "rerun", lint_root, "--failed-only")).stdout
    assert f"attempt {attempt} of {lint_root} (1 job(s) to run, 1 kept)" in out
    done = await world.attempt_done(lint_root, attempt)
    show = (await world.w.admin("runs", "show", done["run_id"])).stdout
    assert f"attempt: {attempt} of {attempt}" in show
    assert f"   * attempt {attempt}: {done['run_id']}  failed" in show and f"attempt 1: {lint_root}" in show
    assert "by admin:bootstrap" in show and "succeeded in attempt" in show
    refused = await world.w.admin("runs", "rerun", ci_root, "--failed-only", check=False)
    assert refused.code == 1 and "nothing to re-run" in refused.stderr
