"""The parameters of ``complete_delivery``: the runs, jobs, needs edges and dispatch-queue rows of one processed
delivery, as the named query in ``queries.sql`` takes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from kici_adapters.postgres import checks as pg_checks
from kici_adapters.postgres import notify
from kici_core.delivery_records import DeliveryOutcome, InboxItem
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.run_records import NewJob, NewRun


# ------------------------------------------------------------------------------------------ complete
def split_matchers(matchers: Sequence[JSONObject]) -> tuple[list[str], list[JSONObject]]:
    """Exact label values and regex matchers, in order (``{kind: exact, value}`` / ``{kind: regex, ...}``)."""
    exact: list[str] = []
    patterns: list[JSONObject] = []
    for m in matchers:
        if m.get("kind") == "exact" and isinstance(m.get("value"), str):
            exact.append(str(m["value"]))
        else:
            patterns.append(dict(m))
    return exact, patterns


def _job_row(run: NewRun, job: NewJob) -> dict[str, JSONValue]:
    exact, _ = split_matchers(job.runs_on)
    return {
        "job_id": job.job_id,
        "run_id": run.run_id,
        "job_name": job.name,
        "base_name": job.base_name,
        "status": job.status,
        "matrix_values": job.matrix_values,
        "runs_on": list(job.runs_on),
        "exclude_labels": list(job.exclude_labels),
        "required_labels": list(exact),
        "job_config": job.job_config,
        "error_message": job.reason,
        "runnable": job.runnable,
    }


def _queue_row(run: NewRun, job: NewJob) -> dict[str, JSONValue]:
    labels, patterns = split_matchers(job.runs_on)
    ex_labels, ex_patterns = split_matchers(job.exclude_labels)
    return {
        "job_id": job.job_id,
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "job_name": job.name,
        "runs_on_labels": list(labels),
        "runs_on_patterns": list(patterns),
        "exclude_labels": list(ex_labels),
        "exclude_patterns": list(ex_patterns),
        "required_labels": list(labels),
        "job_config": job.job_config,
        "repo_url": run.repo_url,
        "ref": run.ref,
        "sha": run.sha,
        "provider": run.provider,
        "routing_key": run.routing_key,
    }


def _run_reason(run: NewRun) -> str | None:
    """Why a run ended at planning (it never started): the reasons of its jobs."""
    reasons = [f"{j.name}: {j.reason}" for j in run.jobs if j.reason]
    return "; ".join(reasons)[:2000] if reasons else None


def complete_params(
    item: InboxItem, outcome: DeliveryOutcome, runs: Sequence[NewRun], *, forward: bool = False
) -> dict[str, Any]:
    """Parameters of ``complete_delivery``: the run graph as JSON row sets, in order, and the triggering event
    (every run of one delivery has the same; it is sent once)."""
    run_rows: list[JSONValue] = []
    job_rows: list[JSONValue] = []
    need_rows: list[JSONValue] = []
    queue_rows: list[JSONValue] = []
    event = next((run.event for run in runs if run.event is not None), None)
    check_rows_: list[JSONValue] = []
    for run in runs:
        check_rows_ += pg_checks.check_rows(
            provider=run.provider,
            run_id=run.run_id,
            routing_key=run.routing_key,
            repo=run.repo_identifier,
            sha=run.sha,
            workflow_name=run.workflow_name,
            run_status=run.status,
            run_reason=_run_reason(run) if run.status != "pending" else None,
            jobs=[(j.job_id, j.name, j.status, j.reason) for j in run.jobs],
        )
        run_rows.append(
            {
                "ord": len(run_rows),
                "run_id": run.run_id,
                "workflow_name": run.workflow_name,
                "status": run.status,
                "provider": run.provider,
                "routing_key": run.routing_key,
                "repo_identifier": run.repo_identifier,
                "repo_url": run.repo_url,
                "ref": run.ref,
                "sha": run.sha,
                "trigger_decision": run.trigger_decision,
                "job_count": len(run.jobs),
                "trigger_event": item.event,
            }
        )
        for job in run.jobs:
            job_rows.append({"ord": len(job_rows), **_job_row(run, job)})
            need_rows += [
                {"run_id": run.run_id, "job_name": job.name, "upstream_name": e.upstream_name, "run_on": list(e.run_on)}
                for e in job.needs
            ]
            if job.runnable:
                queue_rows.append({"ord": len(queue_rows), **_queue_row(run, job)})
    return {
        "org_id": item.org_id,
        "delivery_id": item.delivery_id,
        "runs": Jsonb(run_rows),
        "jobs": Jsonb(job_rows),
        "needs": Jsonb(need_rows),
        "queue": Jsonb(queue_rows),
        "checks": Jsonb(check_rows_),
        "status": outcome.status,
        "event": None if event is None else Jsonb(event),
        "forward": forward,
        "jobs_channel": notify.JOBS,
        "matched_count": outcome.matched_count,
        "repo_identifier": outcome.repo_identifier,
        "ref": outcome.ref,
        "error_message": outcome.error_message,
        "decision_trace": None if outcome.decision_trace is None else Jsonb(outcome.decision_trace),
    }
