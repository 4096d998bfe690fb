"""``kici-admin runs``: list, show, jobs, cancel, rerun and logs of execution runs (commands on the ``runs`` group).

:mod:`kici_runtime.admin_cli.cli` attaches the group to ``kici-admin``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from kici_runtime.admin_cli.client import client, echo_json, table

__all__ = ["runs"]


@click.group()
def runs() -> None:
    """Execution runs (list, show, cancel, logs)."""


_JSON = click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")


def _short(value: Any, n: int = 8) -> str:
    return "" if value is None else str(value)[:n]


@runs.command("list")
@click.option("--status", help="Comma-separated statuses.")
@click.option("--workflow-name")
@click.option("--repo", help="owner/repo")
@click.option("--since", help="ISO timestamp")
@click.option("--count", is_flag=True, help="Print only the number of matching runs.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@_JSON
@click.pass_context
def runs_list(
    ctx: click.Context,
    status: str | None,
    workflow_name: str | None,
    repo: str | None,
    since: str | None,
    count: bool,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    out = client(ctx).request(
        "GET",
        "/api/v1/admin/runs",
        params={
            "status": status,
            "workflowName": workflow_name,
            "repo": repo,
            "since": since,
            "count": "true" if count else None,
            "limit": limit,
            "offset": offset,
        },
    )
    if as_json:
        echo_json(out)
        return
    if count:
        click.echo(str(out["total"]))
        return
    rows = [
        (
            r["runId"],
            r["workflowName"],
            r["status"],
            r.get("repoIdentifier"),
            r.get("ref"),
            r.get("jobCount"),
            r.get("createdAt"),
        )
        for r in out["runs"]
    ]
    click.echo(table(["RUN", "WORKFLOW", "STATUS", "REPO", "REF", "JOBS", "CREATED"], rows))
    click.echo(f"{len(rows)} of {out['total']} run(s)")


@runs.command("show")
@click.argument("run_id")
@_JSON
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show a run, its jobs and their steps; waiting jobs say why no agent took them."""
    api = client(ctx)
    run = api.request("GET", f"/api/v1/admin/runs/{run_id}")
    jobs = api.request("GET", f"/api/v1/admin/runs/{run_id}/jobs", params={"includeSteps": "true"})
    if as_json:
        echo_json({"run": run, "jobs": jobs["jobs"]})
        return
    click.echo(f"Run {run['runId']}  {run['workflowName']}  {run['status']}")
    for key in (
        "repoIdentifier",
        "ref",
        "sha",
        "createdAt",
        "startedAt",
        "completedAt",
        "failureReason",
        "triggeredBy",
    ):
        if run.get(key):
            click.echo(f"  {key}: {run[key]}")
    attempts = run.get("attempts") or []
    if len(attempts) > 1:
        click.echo(f"  attempt: {run.get('attempt', 1)} of {len(attempts)}")
        for a in attempts:
            mark = "*" if a["runId"] == run["runId"] else " "
            click.echo(
                f"   {mark} attempt {a['attempt']}: {a['runId']}  {a['status']}  {a.get('createdAt') or ''}"
                + (f"  by {a['triggeredBy']}" if a.get("triggeredBy") else "")
            )
    line = _checks_line(run.get("checks"))
    if line:
        click.echo(f"  {line}")
    rows = []
    for job in jobs["jobs"]:
        needs = ", ".join(n["upstreamName"] for n in job.get("needs", []))
        rows.append(
            (
                job["jobName"],
                job["status"],
                job.get("agentId"),
                needs,
                job.get("errorMessage") or job.get("waitingReason"),
            )
        )
    click.echo("")
    click.echo(table(["JOB", "STATUS", "AGENT", "NEEDS", "DETAIL"], rows))
    for job in jobs["jobs"]:
        for step in job.get("steps", []):
            click.echo(f"  {job['jobName']} / {step['stepIndex']} {step.get('stepName') or ''}: {step['status']}")


def _checks_line(checks: Any) -> str | None:
    """Where the run's GitHub check runs stand, when something is wrong or still on its way."""
    if not isinstance(checks, dict):
        return None
    if checks.get("lastError"):
        waiting = f"{checks['pending']} of {checks['total']} check run(s) not updated on GitHub"
        retry = (
            f"; next attempt at {checks['nextAttemptAt']}"
            if checks.get("pending") and checks.get("nextAttemptAt")
            else ""
        )
        return (
            f"GitHub checks STUCK: {waiting} after {checks.get('attempts') or 0} failed attempt(s); "
            f"last error at {checks.get('lastErrorAt')}: {checks['lastError']}{retry}"
        )
    if checks.get("pending"):
        return f"GitHub checks: {checks['pending']} of {checks['total']} check run update(s) being sent"
    return f"GitHub checks: {checks['total']} check run(s) up to date"


@runs.command("rerun")
@click.argument("run_id")
@click.option(
    "--failed-only",
    is_flag=True,
    help="Run only the jobs that did not succeed (and what needs them); successful jobs keep their result.",
)
@_JSON
@click.pass_context
def runs_rerun(ctx: click.Context, run_id: str, failed_only: bool, as_json: bool) -> None:
    """Start a new attempt of a finished run: same event, commit and jobs, linked to the original."""
    out = client(ctx).request("POST", f"/api/v1/admin/runs/{run_id}/rerun", body={"failedOnly": failed_only})
    if as_json:
        echo_json(out)
        return
    click.echo(
        f"Run {out['runId']}: attempt {out['attempt']} of {out['originalRunId']} "
        f"({out['rerunJobs']} job(s) to run, {out['carriedJobs']} kept)"
    )


@runs.command("jobs")
@click.argument("run_id")
@click.option("--include-steps", is_flag=True, help="Also list each job's steps.")
@_JSON
@click.pass_context
def runs_jobs(ctx: click.Context, run_id: str, include_steps: bool, as_json: bool) -> None:
    """List a run's jobs: status, agent, needs, and why a waiting job waits."""
    out = client(ctx).request(
        "GET", f"/api/v1/admin/runs/{run_id}/jobs", params={"includeSteps": "true" if include_steps else None}
    )
    if as_json:
        echo_json(out)
        return
    jobs = out["jobs"]
    if not jobs:
        click.echo(f"Run {run_id} has no jobs.")
        return
    rows = [
        (
            job["jobName"],
            job["status"],
            job.get("agentId"),
            job.get("startedAt"),
            job.get("completedAt"),
            ", ".join(n["upstreamName"] for n in job.get("needs", [])),
            job.get("errorMessage") or job.get("waitingReason"),
        )
        for job in jobs
    ]
    click.echo(table(["JOB", "STATUS", "AGENT", "STARTED", "COMPLETED", "NEEDS", "DETAIL"], rows))
    if include_steps:
        for job in jobs:
            for step in job.get("steps", []):
                exit_code = f" (exit {step['exitCode']})" if step.get("exitCode") is not None else ""
                click.echo(
                    f"  {job['jobName']} / {step['stepIndex']} {step.get('stepName') or ''}: "
                    f"{step['status']}{exit_code}"
                )


@runs.command("cancel")
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Skip grace periods and hooks on the agents.")
@_JSON
@click.pass_context
def runs_cancel(ctx: click.Context, run_id: str, force: bool, as_json: bool) -> None:
    """Cancel a run."""
    out = client(ctx).request("POST", f"/api/v1/admin/runs/{run_id}/cancel", body={"force": force} if force else {})
    if as_json:
        echo_json(out)
        return
    click.echo(f"Run {run_id}: {out['status']}")


@runs.command("logs")
@click.argument("run_id")
@click.option("--job", "job_name", help="Only this job (expanded name).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Poll interval with --follow.")
@_JSON
@click.pass_context
def runs_logs(
    ctx: click.Context, run_id: str, job_name: str | None, follow: bool, interval: float, as_json: bool
) -> None:
    """Print a run's log lines, prefixed with the job name unless --job is given.

    With --json, one chunk object per line."""
    api = client(ctx)
    after = 0
    ended = False
    while True:
        out = api.request("GET", f"/api/v1/admin/runs/{run_id}/logs", params={"job": job_name, "after": after})
        for chunk in out["chunks"]:
            if as_json:  # one compact object per line (JSON Lines), so --follow output stays parseable
                click.echo(json.dumps(chunk, ensure_ascii=False))
                continue
            prefix = "" if job_name else f"[{chunk['jobName']}] "
            for line in chunk["lines"]:
                click.echo(f"{prefix}{line}")
        after = out["next"]
        if out["chunks"]:
            continue  # a page of at most 1000 chunks: read on until one comes back empty
        if not follow or ended:
            return
        run = api.request("GET", f"/api/v1/admin/runs/{run_id}")
        # Lines written between the last read and the run's end are read once more before stopping.
        ended = run["status"] in ("success", "failed", "cancelled")
        if not ended:
            time.sleep(interval)


def _input_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """``k=v`` options as a mapping (the orchestrator converts each value to the input's declared type)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        out[name] = value
    return out


@runs.command("dispatch")
@click.option(
    "--source",
    required=True,
    help="The source the repository is read through: a routing key (github:<appId>, "
    "generic:<org>:<id>), a GitHub App id, or a local source's id or name.",
)
@click.option("--repo", required=True, help="owner/repo")
@click.option("--workflow", required=True, help="The workflow's name in the lock file.")
@click.option("--ref", required=True, help="The branch (or tag) to read the lock file at and run.")
@click.option(
    "--type",
    "dispatch_type",
    help="The dispatch type, when the workflow's dispatch trigger lists types (default: the first).",
)
@click.option(
    "--input",
    "input_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An input of the dispatch trigger (repeat); typed per the trigger's descriptors.",
)
@_JSON
@click.pass_context
def runs_dispatch(
    ctx: click.Context,
    source: str,
    repo: str,
    workflow: str,
    ref: str,
    dispatch_type: str | None,
    input_pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run a workflow by hand through its dispatch trigger, with typed inputs."""
    body: dict[str, Any] = {
        "source": source,
        "repo": repo,
        "workflow": workflow,
        "ref": ref,
        "inputs": _input_pairs(input_pairs),
    }
    if dispatch_type:
        body["type"] = dispatch_type
    out = client(ctx).request("POST", "/api/v1/admin/runs/dispatch", body=body)
    if as_json:
        echo_json(out)
        return
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in (out.get("inputs") or {}).items())
    click.echo(
        f"Run {out['runId']}: {out['workflow']} at {out['ref']} of {out['repo']} requested"
        + (f" (inputs: {shown})" if shown else "")
    )
    click.echo(f"  delivery: {out['deliveryId']}  (kici-admin runs show {out['runId']})")
