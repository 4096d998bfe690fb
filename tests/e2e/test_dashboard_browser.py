"""The dashboard in a real headless Chromium, driven over the DevTools protocol, against the real app
(uvicorn on loopback, embedded PostgreSQL) and a real ``kici-agent``.

One scenario, as a developer meets it: sign in with a token; push, and see the run appear without reloading;
open the running job and watch its log stream in; search it; follow the failed matrix job to its failing line;
open a delivery that matched nothing and read why; see why a job waits on the agents page; cancel that run.
A log line and a branch name carrying HTML stay text. Screenshots go to ``$DASHBOARD_SCREENSHOTS`` when set
(``make screenshots`` points it at ``docs/images``), else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.test_agents_e2e import Harness, harness
from tests.support import pg as _pg
from tests.support.browser import Page, chromium

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

TOKEN = "browser-owner-token-" + "4" * 24
XSS_BRANCH = "feature/<img/src=x/onerror=window.__xss=1>"  # a valid git branch name
XSS_LINE = '<img src=x onerror="window.__xss=2"><script>window.__xss=3</script>'


def _repo(root: Path, go: Path) -> tuple[Path, str]:
    """A repository whose lock file runs ``ci`` (a build that waits for ``go``, then a two-way matrix where one
    leg fails) and ``gpu`` (a job no agent can take) on pushes to main and feature branches."""

    def step(name: str, run: str) -> dict[str, Any]:
        return {"name": name, "run": run}

    def job(name: str, labels: list[str], steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "_type": "static",
            "name": name,
            "runsOn": [{"kind": "exact", "value": v} for v in labels],
            "needs": [],
            "steps": steps,
            **extra,
        }

    build = job(
        "build",
        ["linux"],
        [
            step(
                "compile",
                "printf '\\033[1;32mbuild ok\\033[0m\\n'; echo "
                + json.dumps(XSS_LINE)
                + '; for i in $(seq 1 400); do echo "compiling unit $i"; done',
            ),
            step("wait", f"echo waiting-for-go; while [ ! -f {go} ]; do sleep 0.1; done; echo after-go"),
        ],
    )
    test = job(
        "test",
        ["linux"],
        [
            step(
                "pytest",
                'echo collecting; case "$KICI_JOB_NAME" in *3.12*) '
                'echo "FAILED test_math.py::test_add - assert 2 == 3"; exit 1;; esac; '
                'echo "1 passed"',
            )
        ],
        needs=["build"],
        matrix={"_type": "static", "values": {"python": ["3.11", "3.12"]}},
    )
    train = job("train", ["gpu"], [step("train", "true")])
    src = {"file": ".kici/workflows/ci.ts", "export": "#default"}
    trigger = {
        "_type": "push",
        "branches": [{"type": "glob", "pattern": "main"}, {"type": "glob", "pattern": "feature/**"}],
        "paths": [],
    }
    lock = {
        "schemaVersion": 29,
        "source": src,
        "contentHash": "h",
        "workflows": [
            {
                "name": name,
                "source": src,
                "contentHash": name,
                "compileSchemaVersion": 5,
                "triggers": [trigger],
                "jobs": jobs,
            }
            for name, jobs in (("ci", [build, test]), ("gpu", [train]))
        ],
    }
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for args in (
        ["init", "-q", "-b", "main", str(repo)],
        ["-C", str(repo), "add", "-A"],
        ["-C", str(repo), "commit", "-q", "-m", "init"],
        ["-C", str(repo), "branch", XSS_BRANCH],
    ):
        subprocess.run(["git", *args], check=True, capture_output=True, env=env)
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return repo, sha


async def _push(h: Harness, repo: Path, sha: str, branch: str) -> None:
    body = {
        "ref": f"refs/heads/{branch}",
        "before": "0" * 40,
        "after": sha,
        "repository": {"full_name": "acme/repo", "name": "repo", "default_branch": "main", "clone_url": repo.as_uri()},
        "sender": {"login": "t", "id": 1},
    }
    async with httpx.AsyncClient(base_url=h.base) as http:
        r = await http.post(
            "/webhook/acme/generic/repo",
            json=body,
            headers={"x-event-type": "push", "x-delivery-id": str(uuid.uuid4())},
        )
        assert r.status_code in (200, 202), r.text


def _shots(tmp_path: Path) -> Path:
    configured = os.environ.get("DASHBOARD_SCREENSHOTS")
    return Path(configured) if configured else tmp_path / "screenshots"


async def _text(page: Page, selector: str) -> str:
    return str(await page.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"))


async def test_developer_follows_a_push_to_its_failing_line_in_the_browser(db_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    repo, sha = _repo(tmp_path, go)
    shots = _shots(tmp_path)
    env = {"KICI_SECRET_KEY": "ef" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": TOKEN}
    async with harness(db_url, tmp_path, **env) as (h, _), chromium() as page:
        await h.add_local_source(repo)
        dash = f"{h.base}/dashboard/"

        # sign in
        await page.goto(dash)
        await page.wait("location.pathname.endsWith('/dashboard/login')", what="the sign-in page", show="location.href")
        await page.screenshot(shots / "dashboard-sign-in.png")
        await page.type("#token", TOKEN)
        await page.press("Enter", "Enter", 13)
        await page.wait(
            "document.querySelector('h1') && document.querySelector('h1').textContent === 'Runs'",
            what="the runs page after signing in",
        )
        assert TOKEN not in await page.js("document.documentElement.outerHTML")

        # a push: the run appears without a reload, its hostile branch name as text
        await page.js("window.__kept = 'same page'")
        await h.start_agent("agent-1", "linux", max_concurrency=2)
        await _push(h, repo, sha, XSS_BRANCH)
        await page.wait("document.querySelectorAll('tr[data-run]').length === 2", what="two runs listed live")
        assert await page.js("window.__kept") == "same page"
        branches = await page.js("[...document.querySelectorAll('td.branch')].map(e => e.textContent)")
        assert branches == [XSS_BRANCH, XSS_BRANCH]
        assert await page.js("document.querySelectorAll('main img').length") == 0

        # the running build: its log streams in while the agent runs it
        ci = await page.js("[...document.querySelectorAll('tr[data-run] a')].find(a => a.textContent === 'ci').href")
        await page.goto(ci)
        await page.wait(
            "[...document.querySelectorAll('.jobs a')].some(a => a.textContent === 'build')",
            what="the build job on the run page",
        )
        await page.js("[...document.querySelectorAll('.jobs a')].find(a => a.textContent === 'build').click()")
        await page.wait(
            "document.getElementById('log') && document.getElementById('log').textContent.includes('waiting-for-go')",
            what="the build log up to 'waiting-for-go'",
            show="location.href + ' ' + (document.getElementById('log') || {}).textContent",
        )
        await page.js("window.__kept = 'log page'")
        go.write_text("go")
        await page.wait(
            "document.getElementById('log').textContent.includes('after-go')",
            what="'after-go' streamed into the open log",
            show="document.getElementById('log').textContent.slice(-500)",
        )
        await page.wait(
            "document.getElementById('log').getAttribute('data-ended') === 'success'",
            what="the stream's end with the job's status",
        )
        assert await page.js("window.__kept") == "log page"
        assert await _text(page, "#job-status .badge") == "success"
        log_text = await _text(page, "#log")
        assert XSS_LINE in log_text and "build ok" in log_text
        assert await page.js("document.querySelectorAll('#log img, #log script').length") == 0
        assert await page.js("window.__xss") is None
        assert await page.js("document.querySelector('#log span.fg2.b').textContent") == "build ok"
        numbers = await page.js("[...document.querySelectorAll('#log .ln')].map(a => +a.textContent)")
        assert numbers == list(range(1, len(numbers) + 1))  # streamed lines continue the numbering, no gap
        await page.js("window.scrollTo(0, 0)")
        await page.screenshot(shots / "dashboard-log.png")
        # search: '/' focuses the box, Enter jumps to the match
        await page.press("/", "Slash", 191)
        assert await page.js("document.activeElement.id") == "log-search"
        await page.send("Input.insertText", {"text": "unit 250"})
        await page.press("Enter", "Enter", 13)
        await page.wait(
            "document.querySelector('.line.current')",
            what="the search match",
            show=(
                "document.getElementById('log-search').value + '|' + "
                "document.getElementById('search-count').textContent"
            ),
        )
        assert "compiling unit 250" in await _text(page, ".line.current")

        # the failed matrix leg: from the run's graph to the failing line
        await page.goto(ci)
        await page.wait("document.querySelector('h1 .badge').textContent === 'failed'", what="the run failed", limit=90)
        await page.screenshot(shots / "dashboard-run.png")
        failed = await page.js("document.querySelector('svg .node.s-failed').getAttribute('href')")
        assert failed.endswith("#failure")
        await page.click("svg .node.s-failed")
        await page.wait("location.hash === '#failure'", what="the failed job's page", show="location.href")
        # the agent may deliver the last log lines just after the status: reload until they are there
        with anyio.fail_after(30):
            while not await page.js("Boolean(document.querySelector('.line:has(#failure)'))"):
                await page.goto(str(await page.js("location.href")))
        assert "assert 2 == 3" in str(await page.js("document.querySelector('.line:has(#failure)').textContent"))
        assert "line" in await _text(page, "#failure-note")

        # a push that matched nothing: the delivery says which filter rejected each workflow
        await _push(h, repo, sha, "docs/typo")
        await page.goto(f"{dash}deliveries")
        await page.wait("document.querySelector('tbody tr .bad-text')", what="a processed delivery that ran nothing")
        await page.js("document.querySelector('tbody tr .bad-text').closest('tr').querySelector('a').click()")
        await page.wait(
            "document.body.innerText.includes('No workflow matched this push')",
            what="the delivery page explaining the miss",
        )
        why = str(await page.js("document.querySelector('.trace').innerText"))
        assert "ci:" in why and "gpu:" in why and why.count("rejected by the branches filter") == 2
        assert "docs/typo" in why
        await page.screenshot(shots / "dashboard-delivery.png")

        # agents and queue: why the gpu job waits
        await page.goto(f"{dash}agents")
        await page.wait(
            "document.body.innerText.includes(\"no connected agent has 'gpu'\")", what="the gpu job's waiting reason"
        )
        assert "agent-1" in await _text(page, "main table")
        await page.screenshot(shots / "dashboard-agents.png")

        # cancel the waiting run
        gpu = str((await h.query("SELECT run_id::text AS id FROM execution_runs WHERE workflow_name = 'gpu'"))[0]["id"])
        await page.goto(f"{dash}runs/{gpu}")
        await page.click("#cancel-run")
        await page.wait(
            "document.querySelector('h1 .badge') && document.querySelector('h1 .badge').textContent === 'cancelled'",
            what="the run cancelled",
        )
        status = await h.query("SELECT status, cancelled_by FROM execution_runs WHERE run_id = %(r)s", r=gpu)
        assert status[0]["status"] == "cancelled" and status[0]["cancelled_by"] == "dashboard:bootstrap"

        # dark theme on a phone
        await page.viewport(390, 844, mobile=True, dark=True)
        await page.goto(ci)
        await page.wait("document.querySelector('svg.graph')", what="the run page on a phone")
        await page.screenshot(shots / "dashboard-phone-dark.png")
        assert await page.js("document.documentElement.scrollWidth <= window.innerWidth + 1")  # no page-wide scroll
        assert await page.js("window.__xss") is None
        assert not [e for e in page.errors if "Content Security Policy" in e], page.errors
