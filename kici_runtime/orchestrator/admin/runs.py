"""Admin API for execution runs: list, show, jobs (with steps), logs, cancel, re-run (operations spec §2.2, agent
spec §9).

``routes(hub)`` gives the Starlette routes; they need the process's
:class:`~kici_runtime.orchestrator.dispatcher.AgentHub`
(cancel notifies agents; a waiting job's ``waitingReason`` comes from routing's explanation over the agents
connected to every process sharing the database, :func:`kici_core.cluster.why_waiting`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kici_adapters.postgres.checks import PgCheckOutbox
from kici_adapters.postgres.concurrency import PgConcurrency
from kici_adapters.postgres.reruns import PgReruns
from kici_adapters.postgres.runs import PgRunStore
from kici_core import cluster, errors, routing
from kici_core.ports import ClusterDirectory
from kici_runtime.orchestrator.admin import auth as admin_auth
from kici_runtime.orchestrator.admin import bodies
from kici_runtime.orchestrator.admin.auth import Caller
from kici_runtime.orchestrator.context import AppContext
from kici_runtime.orchestrator.dispatcher import AgentHub

__all__ = ["routes", "waiting_reason"]

PREFIX = "/api/v1/admin/runs"
_CAMEL = {
    "run_id": "runId",
    "job_id": "jobId",
    "job_name": "jobName",
    "base_name": "baseName",
    "workflow_name": "workflowName",
    "repo_identifier": "repoIdentifier",
    "routing_key": "routingKey",
    "repo_url": "repoUrl",
    "created_at": "createdAt",
    "started_at": "startedAt",
    "completed_at": "completedAt",
    "duration_ms": "durationMs",
    "failure_reason": "failureReason",
    "cancelled_by": "cancelledBy",
    "delivery_id": "deliveryId",
    "job_count": "jobCount",
    "log_bytes": "logBytes",
    "matrix_values": "matrixValues",
    "agent_id": "agentId",
    "error_message": "errorMessage",
    "last_heartbeat_at": "lastHeartbeatAt",
    "queue_status": "queueStatus",
    "dispatch_attempts": "dispatchAttempts",
    "step_index": "stepIndex",
    "step_name": "stepName",
    "step_type": "stepType",
    "exit_code": "exitCode",
    "runs_on": "runsOn",
    "exclude_labels": "excludeLabels",
    "needs_satisfied": "needsSatisfied",
    "triggered_by": "triggeredBy",
    "updated_at": "updatedAt",
    "original_run_id": "originalRunId",
}
_HIDDEN = {
    "job_config",
    "trigger_decision",
    "provider_context",
    "event_log_id",
    "org_id",
    "required_labels",
    "ack_deadline",
    "ready_at",
    "queue_agent_id",
    "log_path",
    "id",
    "outputs",
    "attempts",
    "rerun_key",
    "last_provisioning_error",
}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _out(row: Mapping[str, Any]) -> dict[str, Any]:
    return {_CAMEL.get(k, k): _plain(v) for k, v in row.items() if k not in _HIDDEN}


def _since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise admin_auth.validation([{"path": ["since"], "message": "must be an ISO timestamp"}]) from None


def _int(raw: str | None, default: int, *, name: str, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise admin_auth.validation([{"path": [name], "message": "must be an integer"}]) from None
    return max(low, min(high, value))


def waiting_reason(
    hub: AgentHub, job: Mapping[str, Any], agents: Sequence[cluster.ClusterAgent] | None = None
) -> str | None:
    """Why a queued job (a ``list_jobs`` row) waits: no connected agent takes its labels. With ``agents`` (the
    cluster-wide list, :meth:`kici_core.ports.ClusterDirectory.agents`) the agents of every process sharing the
    database count, else only this process's."""
    if job.get("queue_status", "pending") != "pending" or job.get("status") not in ("pending", "queued"):
        return None
    try:
        if agents is None:
            reason = hub.explain(job.get("runs_on") or [], job.get("exclude_labels") or [])
        else:
            selector = routing.compile_selector(job.get("runs_on") or [], job.get("exclude_labels") or [])
            reason = cluster.explain(selector, agents, held=hub.core.explain(selector).held).message
    except errors.InvalidInput as exc:
        reason = f"invalid label matchers: {exc.message}"
    if job.get("last_provisioning_error"):  # --- the auto-scaler's word (kici_runtime.orchestrator.scaler)
        reason = f"{reason}; {job['last_provisioning_error']}"
    return reason


def routes(
    hub: AgentHub, *, runs: PgRunStore, concurrency: PgConcurrency, directory: ClusterDirectory | None = None
) -> list[BaseRoute]:
    """The run routes, bound to ``hub`` and the stores it reports to (``runs``, ``concurrency``); with ``directory``
    a waiting job's reason considers the agents of every process sharing the database, else only this process's."""

    async def _run_or_404(run_id: str, caller: Caller) -> dict[str, Any]:
        run = await runs.get_run(run_id)
        if run is None:
            raise errors.NotFound(f"Run {run_id} not found")
        caller.require_key(run.get("routing_key"))
        return run

    async def list_runs(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        q = request.query_params
        statuses = [s for s in (q.get("status") or "").split(",") if s]
        limit = _int(q.get("limit"), 20, name="limit", low=1, high=100)
        offset = _int(q.get("offset"), 0, name="offset", low=0, high=10**9)
        routing_key = caller.token.routing_key or q.get("routingKey") or None  # scoped tokens: their own key
        rows, total = await runs.list_runs(
            statuses=statuses,
            workflow=q.get("workflowName"),
            repo=q.get("repo"),
            since=_since(q.get("since")),
            routing_key=routing_key,
            limit=limit,
            offset=offset,
            branch=q.get("branch") or None,
        )
        if q.get("count") in ("true", "1"):
            return JSONResponse({"total": total})
        return JSONResponse({"runs": [_out(r) for r in rows], "total": total, "limit": limit, "offset": offset})

    reruns = PgReruns(runs)
    check_outbox = PgCheckOutbox(runs.db)

    async def show_run(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        run = await _run_or_404(request.path_params["run_id"], caller)
        out = _out(run)
        out["attempts"] = [_out(a) for a in await reruns.attempts(str(run["run_id"]))]
        problem = await check_outbox.problems(str(run["run_id"]))
        if problem is not None:
            out["checks"] = _plain(
                {
                    "total": problem.total,
                    "pending": problem.pending,
                    "failing": problem.failing,
                    "attempts": problem.attempts,
                    "lastError": problem.last_error,
                    "lastErrorAt": problem.last_error_at,
                    "nextAttemptAt": problem.next_attempt_at,
                }
            )
        return JSONResponse(out)

    async def rerun(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.cancel")
        run = await _run_or_404(request.path_params["run_id"], caller)
        failed_only = bodies.parse(bodies.RerunBody, await admin_auth.json_body(request)).failedOnly
        try:
            result = await reruns.rerun(
                str(run["run_id"]), failed_only=failed_only, requested_by=f"admin:{caller.token.label}"
            )
        except errors.Conflict as exc:
            return JSONResponse({"error": f"Cannot re-run: {exc.message}"}, status_code=409)
        return JSONResponse(
            {
                "runId": result.run_id,
                "originalRunId": result.original_run_id,
                "attempt": result.attempt,
                "rerunJobs": result.rerun_jobs,
                "carriedJobs": result.carried_jobs,
            },
            status_code=201,
        )

    async def run_jobs(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        run_id = request.path_params["run_id"]
        await _run_or_404(run_id, caller)
        include = request.query_params.get("includeSteps") in ("true", "1")
        jobs = await runs.list_jobs(run_id, include_steps=include)
        in_groups = await concurrency.waiting_in_run(run_id)  # jobs an agent holds until a group frees up
        agents = await directory.agents() if directory is not None else None  # every process's agents
        out = []
        for job in jobs:
            item = _out(job)
            if str(job.get("job_id")) in in_groups:
                item["waitingReason"] = in_groups[str(job.get("job_id"))]
            reason = waiting_reason(hub, job, agents)
            if reason is not None:
                item["waitingReason"] = reason
            if include:
                item["steps"] = [_out(s) for s in job.get("steps", [])]
            out.append(item)
        return JSONResponse({"jobs": out})

    async def run_logs(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        run_id = request.path_params["run_id"]
        await _run_or_404(run_id, caller)
        after = _int(request.query_params.get("after"), 0, name="after", low=0, high=2**62)
        chunks = await runs.logs(run_id, job_name=request.query_params.get("job") or None, after=after)
        items = [
            {
                "id": c["id"],
                "jobId": str(c["job_id"]),
                "jobName": c["job_name"],
                "stepIndex": -1 if c["step_index"] is None else c["step_index"],
                "lines": (c["content"] or "").split("\n"),
                "createdAt": _plain(c["created_at"]),
            }
            for c in chunks
        ]
        return JSONResponse({"chunks": items, "next": items[-1]["id"] if items else after})

    async def cancel_run(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.cancel")
        run_id = request.path_params["run_id"]
        await _run_or_404(run_id, caller)
        force = bodies.parse(bodies.CancelRunBody, await admin_auth.json_body(request)).force
        try:
            result = await hub.cancel_run(run_id, force=force, cancelled_by=caller.token.label)
        except errors.Conflict as exc:
            return JSONResponse({"error": "Run already in terminal state", "status": exc.message}, status_code=409)
        return JSONResponse(result)

    return [
        Route(PREFIX, admin_auth.endpoint(list_runs), methods=["GET"]),
        Route(PREFIX + "/{run_id}", admin_auth.endpoint(show_run), methods=["GET"]),
        Route(PREFIX + "/{run_id}/jobs", admin_auth.endpoint(run_jobs), methods=["GET"]),
        Route(PREFIX + "/{run_id}/logs", admin_auth.endpoint(run_logs), methods=["GET"]),
        Route(PREFIX + "/{run_id}/cancel", admin_auth.endpoint(cancel_run), methods=["POST"]),
        Route(PREFIX + "/{run_id}/rerun", admin_auth.endpoint(rerun), methods=["POST"]),
    ]
