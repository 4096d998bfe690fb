"""The runs to create from run plans: the run and job rows, with each job's ``jobConfig`` for the agent."""

from __future__ import annotations

from collections.abc import Callable

from kici_core import lockfile, planning
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.lockfile_cache import to_plain
from kici_core.run_records import NeedEdge, NewJob, NewRun


def new_run(
    plan: planning.RunPlan,
    *,
    run_id: str,
    provider: str,
    routing_key: str,
    repo: str,
    repo_url: str,
    ref: str,
    sha: str | None,
    decision: JSONObject,
    lock_source: lockfile.SourceRef,
    event: JSONObject,
    plain: Callable[[object], JSONValue] = to_plain,
) -> NewRun:
    """The run to create for ``plan``; ``plain`` converts lock-file values to plain JSON (a memo such as the
    one of :meth:`~kici_core.lockfile_cache.ParsedLockfiles.plain` may return the same object again: it is
    copied before any change)."""
    runnable = set(plan.runnable)
    workflow_config = _workflow_config(plan.workflow, lock_source)
    jobs = tuple(
        NewJob(
            job_id=j.job_id,
            name=j.name,
            base_name=j.base_name,
            matrix_values=dict(j.matrix_values) if j.matrix_values is not None else None,
            needs=tuple(NeedEdge(upstream_name=e.upstream, run_on=tuple(sorted(e.run_on))) for e in j.needs),
            runs_on=tuple(dict(m) for m in j.lock_job.runs_on),
            exclude_labels=tuple(dict(m) for m in j.lock_job.exclude_labels),
            job_config=_job_config(j, workflow_config, plain),
            runnable=j.name in runnable,
            status=j.status,
            reason=j.reason,
        )
        for j in plan.jobs
    )
    status = plan.conclusion.status if plan.conclusion is not None else "pending"
    return NewRun(
        run_id=run_id,
        workflow_name=plan.workflow_name,
        provider=provider,
        routing_key=routing_key,
        repo_identifier=repo,
        repo_url=repo_url,
        ref=ref,
        sha=sha,
        trigger_decision=decision,
        jobs=jobs,
        status=status,
        event=event,
    )


def job_source(source: lockfile.SourceRef) -> JSONObject:
    """``jobConfig.source`` for a lock-file source: ``file`` relative to ``.kici/`` (the lock file's paths are
    repo-relative) and ``exportName`` without the ``#`` and any ``[index]`` (``#default[1]`` -> ``default``;
    the agent finds the workflow in that export by ``workflowName``)."""
    file = source.file.removeprefix("./")
    out: dict[str, JSONValue] = {"file": file.removeprefix(".kici/")}
    export = (source.export or "").removeprefix("#").split("[", 1)[0]
    if export:
        out["exportName"] = export
    return out


def _workflow_config(workflow: lockfile.Workflow, lock_source: lockfile.SourceRef) -> JSONObject:
    """The ``jobConfig`` keys every job of ``workflow`` shares: where the agent loads it from, and the hashes its
    drift check compares (only when the lock has them)."""
    config: dict[str, JSONValue] = {"source": job_source(workflow.source or lock_source)}
    if workflow.content_hash:
        config["contentHash"] = workflow.content_hash
    hash_files = to_plain(workflow.raw.get("resolvedHashFiles"))
    if isinstance(hash_files, list) and hash_files:
        config["resolvedHashFiles"] = hash_files
    group = to_plain(workflow.raw.get("concurrency"))
    if isinstance(group, dict) and group.get("hasGroup") is True:  # read back when the agent reports its group
        config["workflowConcurrency"] = group
    return config


def _job_config(
    job: planning.PlannedJob, workflow_config: JSONObject, plain: Callable[[object], JSONValue] = to_plain
) -> JSONObject:
    raw = plain(job.lock_job.raw)
    config: dict[str, JSONValue] = dict(raw) if isinstance(raw, dict) else {}
    config.update(workflow_config)
    config["name"] = job.name
    config["baseJobName"] = job.base_name
    if job.matrix_values is not None:
        config["matrixValues"] = dict(job.matrix_values)
    return config
