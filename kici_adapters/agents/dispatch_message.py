"""The ``job.dispatch`` message for a claimed dispatch-queue row (agent protocol spec, ``job.dispatch``)."""

from __future__ import annotations

from kici_adapters.agents import wire
from kici_core.dispatch_records import DispatchRow
from kici_core.jsontypes import JSONValue

__all__ = ["build_dispatch"]


def build_dispatch(row: DispatchRow, *, message_id: str, now_ms: int, token: str | None) -> dict[str, JSONValue]:
    """``job.dispatch`` for ``row``: its job config (orchestrator-only keys stripped, names and the run's triggering
    event filled in), where to clone, upstream results, and the clone credential when there is one (``token``)."""
    config: dict[str, JSONValue] = {k: v for k, v in row.job_config.items() if k not in wire.STRIPPED_JOB_CONFIG_KEYS}
    config.setdefault("workflowName", row.workflow_name)
    config.setdefault("name", row.job_name)
    config.setdefault("baseJobName", row.base_name)
    if row.provider:
        config.setdefault("provider", row.provider)
    if row.event is not None:
        config.setdefault("event", row.event)
    base = row.repo_url[:-4] if row.repo_url.endswith(".git") else row.repo_url
    msg: dict[str, JSONValue] = {
        "type": "job.dispatch",
        "messageId": message_id,
        "runId": row.run_id,
        "jobId": row.job_id,
        "repoUrl": row.repo_url,
        "ref": row.ref,
        "sha": row.sha,
        "lockFileUrl": f"{base}/raw/{row.sha or row.ref}/.kici/kici.lock.json",
        "jobConfig": config,
        "timestamp": now_ms,
    }
    if row.request_id:
        msg["requestId"] = row.request_id
    if row.upstream_statuses:
        msg["upstreamJobOutputs"] = row.upstream_outputs
        msg["upstreamJobStatuses"] = dict(row.upstream_statuses)
    if token:
        msg["token"] = token
        msg["sourceAuth"] = {"kind": "basic", "user": "x-access-token", "secret": token}
    return msg
