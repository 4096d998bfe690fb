"""Processing the deliveries the orchestrator makes itself: schedule fires and manual runs.

Both go through :meth:`kici_core.pipeline.Pipeline.process` like any webhook and end the same way: an outcome
on the event-log entry with a decision trace, and runs. A schedule fire is matched against its registration
(the workflow as registered from the default branch, at the registered commit), never against a freshly
fetched lock file (lock-file spec §7.3). A manual run reads the lock file at the requested ref, matches the
named workflow alone against a ``dispatch`` event, and gives the run the typed inputs (checked against the
trigger's descriptors, defaults filled in) in its event's ``payload.inputs``.

:func:`prepare_dispatch` is the same check for the admin API, which answers a bad request before accepting it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kici_core import errors, events, inputs, lockfile, matching, new_runs, planning
from kici_core import triggers as t
from kici_core.delivery_records import DeliveryOutcome, InboxItem
from kici_core.jsontypes import JSONValue
from kici_core.registrations import DISPATCH_EVENT, SCHEDULE_EVENT
from kici_core.run_records import NewRun
from kici_core.source_records import RepoSource

if TYPE_CHECKING:
    from kici_core.pipeline import Pipeline, ProcessOutput, Provider

__all__ = ["DispatchPlan", "prepare_dispatch", "process_internal"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DispatchPlan:
    """A checked manual run: the workflow, its matching trigger and the inputs the run receives."""

    lock: lockfile.Lockfile
    workflow: lockfile.Workflow
    trigger_index: int
    dispatch_type: str | None
    inputs: dict[str, JSONValue]


def _dispatch_trigger(workflow: lockfile.Workflow, dispatch_type: str | None) -> tuple[int, t.DispatchTrigger]:
    """The first ``dispatch`` trigger a manual run of ``dispatch_type`` matches (``types`` empty or listing it).

    Raises:
        InvalidInput: the workflow has no such trigger.
    """
    found = [(i, trig) for i, trig in enumerate(workflow.triggers) if isinstance(trig, t.DispatchTrigger)]
    if not found:
        raise errors.InvalidInput(f'workflow "{workflow.name}" has no dispatch trigger: it cannot be run by hand')
    for i, trig in found:
        if not trig.types or (dispatch_type is not None and dispatch_type in trig.types):
            return i, trig
    listed = sorted({x for _, trig in found for x in trig.types})
    raise errors.InvalidInput(
        f'workflow "{workflow.name}" runs only for dispatch types {", ".join(listed)}: pick one with --type'
    )


def default_dispatch_type(workflow: lockfile.Workflow) -> str | None:
    """The type a manual run uses when none is given: the first listed by the first ``dispatch`` trigger."""
    for trig in workflow.triggers:
        if isinstance(trig, t.DispatchTrigger):
            return trig.types[0] if trig.types else None
    return None


async def prepare_dispatch(
    pipeline: Pipeline,
    *,
    provider_name: str,
    source: RepoSource,
    repo: str,
    ref: str,
    workflow_name: str,
    dispatch_type: str | None,
    given: Mapping[str, JSONValue],
) -> DispatchPlan:
    """Read the lock file at ``ref`` and check a manual run of ``workflow_name`` with ``given`` inputs.

    Raises:
        NotFound: no lock file at ``ref``, or no such workflow in it.
        LockfileError: the lock file is corrupt.
        InvalidInput: the workflow cannot be run by hand (no matching ``dispatch`` trigger).
        InputErrors: the inputs do not satisfy the trigger's descriptors (each error names its path).
        Unavailable: the repository could not be read.
    """
    provider = pipeline.providers.get(provider_name)
    if provider is None:
        raise errors.InvalidInput(f"no repository provider for {provider_name} sources")
    fetched = await provider.lockfiles.fetch_lockfile(source, repo, ref)
    if fetched.content is None:
        raise errors.NotFound(f"no {lockfile.LOCKFILE_PATH} in {repo} at {ref}")
    lock = await pipeline.offload(functools.partial(pipeline.parsed.parse, fetched.content))
    try:
        workflow = lock.workflow(workflow_name)
    except KeyError:
        raise errors.NotFound(
            f'workflow "{workflow_name}" is not in the lock file of {repo} at {ref} '
            f"(it has: {', '.join(lock.workflow_names) or 'none'})"
        ) from None
    kind = dispatch_type if dispatch_type is not None else default_dispatch_type(workflow)
    index, trigger = _dispatch_trigger(workflow, kind)
    resolved = inputs.resolve(trigger.inputs, given)
    return DispatchPlan(lock=lock, workflow=workflow, trigger_index=index, dispatch_type=kind, inputs=resolved)


def _outcome(status: str, message: str, **kw: str | None) -> ProcessOutput:
    from kici_core.pipeline import ProcessOutput

    return ProcessOutput(
        outcome=DeliveryOutcome(
            status=status,  # type: ignore[arg-type]
            error_message=message,
            repo_identifier=kw.get("repo"),
            ref=kw.get("ref"),
        )
    )


async def _runs(
    pipeline: Pipeline,
    item: InboxItem,
    workflow: lockfile.Workflow,
    event: events.NormalisedEvent,
    *,
    repo: str,
    repo_url: str,
    ref: str,
    sha: str | None,
    lock_source: lockfile.SourceRef,
    run_id: str | None,
) -> ProcessOutput:
    """Match ``workflow`` alone against ``event`` and plan its run when it matches.

    Like every delivery's, the matching and planning run through the pipeline's ``offload`` (never on the
    serving event loop), within its time budget and its cap on jobs per delivery.
    """
    from kici_core.pipeline import ProcessOutput

    budget, timer = pipeline.budget_seconds, pipeline.timer
    deadline = None if budget is None else timer() + budget

    def check() -> None:
        if deadline is not None and timer() > deadline:
            raise errors.ProcessingTimeout(f"matching ran past its time budget of {budget:g} s")

    def decide() -> tuple[matching.MatchResult, planning.RunPlan | None] | str:
        result = matching.evaluate(
            [matching.WorkflowTriggers(name=workflow.name, triggers=workflow.triggers)], event, check=check
        )
        if not result.matched_names:
            return result, None
        plan = planning.plan_workflow(workflow, id_factory=pipeline.ids)
        if len(plan.jobs) > pipeline.max_jobs:
            return (
                f"workflow {workflow.name!r} has {len(plan.jobs)} jobs: more than one delivery may create "
                f"({pipeline.max_jobs}, KICI_MAX_JOBS_PER_DELIVERY)"
            )
        return result, plan

    decided = await pipeline.offload(decide)
    if isinstance(decided, str):
        pipeline.observer.processed("error")
        return _outcome("failed", decided, repo=repo, ref=sha or ref)
    result, plan = decided
    runs: tuple[NewRun, ...] = ()
    if plan is not None:
        runs = (
            new_runs.new_run(
                plan,
                run_id=run_id or pipeline.ids(),
                provider=item.provider,
                routing_key=item.routing_key,
                repo=repo,
                repo_url=repo_url,
                ref=ref,
                sha=sha,
                decision=result.decisions[0].summary_dict(),
                lock_source=lock_source,
                event=event.to_wire(item.provider),
            ),
        )
    pipeline.observer.processed("matched" if runs else "skipped")
    outcome = DeliveryOutcome(
        status="processed",
        matched_count=len(runs),
        repo_identifier=repo,
        ref=sha or ref,
        decision_trace=result.to_dict(),
    )
    return ProcessOutput(outcome=outcome, runs=runs, match=result, event=event)


async def _schedule(pipeline: Pipeline, item: InboxItem, payload: Mapping[str, JSONValue]) -> ProcessOutput:
    reg_id = payload.get("registrationId")
    store = pipeline.registrations
    registration = await store.get(reg_id) if store is not None and isinstance(reg_id, str) else None
    if registration is None:
        return _outcome("received", "the schedule's workflow registration no longer exists")
    repo, sha = registration.repo_identifier, registration.sha
    try:
        workflow = lockfile.parse_workflow(registration.workflow, 0, "workflows[0]")
    except errors.LockfileError as exc:
        return _outcome("lockfile_corrupt", str(exc)[:2000], repo=repo, ref=sha)
    index = payload.get("triggerIndex")
    trigger = workflow.triggers[index] if isinstance(index, int) and 0 <= index < len(workflow.triggers) else None
    given = inputs.resolve(trigger.inputs, {}) if isinstance(trigger, t.ScheduleTrigger) and trigger.inputs else {}
    event = events.internal_event("schedule", {**payload, "inputs": given}, source_repo=repo)
    source = lockfile.SourceRef(
        file=str(registration.lock_source.get("file") or ".kici/workflows"),
        export=str(registration.lock_source.get("export") or "") or None,
    )
    return await _runs(
        pipeline,
        item,
        workflow,
        event,
        repo=repo,
        repo_url=registration.repo_url,
        ref=registration.ref,
        sha=sha,
        lock_source=source,
        run_id=None,
    )


async def _dispatch(
    pipeline: Pipeline, item: InboxItem, payload: Mapping[str, JSONValue], source: RepoSource | None, provider: Provider
) -> ProcessOutput:
    repository = payload.get("repository")
    repo = repository.get("full_name") if isinstance(repository, Mapping) else None
    ref, name, given = payload.get("ref"), payload.get("workflowName"), payload.get("inputs")
    if not isinstance(repo, str) or not isinstance(ref, str) or not isinstance(name, str):
        return _outcome("failed", "manual run without repository, ref or workflow name")
    if source is None:
        return _outcome("received", f"no source registered for {item.routing_key}", repo=repo, ref=ref)
    action = payload.get("action")
    kind = action if isinstance(action, str) else None
    try:
        plan = await prepare_dispatch(
            pipeline,
            provider_name=item.provider,
            source=source,
            repo=repo,
            ref=ref,
            workflow_name=name,
            dispatch_type=kind,
            given=given if isinstance(given, Mapping) else {},
        )
    except errors.LockfileError as exc:
        return _outcome("lockfile_corrupt", str(exc)[:2000], repo=repo, ref=ref)
    except errors.NotFound as exc:
        return _outcome(
            "lockfile_missing" if "no " + lockfile.LOCKFILE_PATH in exc.message else "processed",
            exc.message,
            repo=repo,
            ref=ref,
        )
    except errors.InvalidInput as exc:  # also the inputs: the lock file changed since the request was checked
        if isinstance(exc, errors.Unavailable):  # pragma: no cover - not an InvalidInput subclass
            raise
        return _outcome("failed", exc.message[:2000], repo=repo, ref=ref)
    by = payload.get("requestedBy")
    event = events.NormalisedEvent(
        type="dispatch",
        action=plan.dispatch_type,
        target_branch=ref,
        source_repo=repo,
        sender_username=by if isinstance(by, str) else None,
        payload={**payload, "inputs": plan.inputs},
    )
    run_id = payload.get("runId")
    return await _runs(
        pipeline,
        item,
        plan.workflow,
        event,
        repo=repo,
        repo_url=provider.repo_url(source, repo, payload),
        ref=ref,
        sha=None,
        lock_source=plan.lock.source,
        run_id=run_id if isinstance(run_id, str) else None,
    )


async def process_internal(
    pipeline: Pipeline, item: InboxItem, payload: Mapping[str, JSONValue], source: RepoSource | None
) -> ProcessOutput:
    """Process a delivery of source ``internal`` (a schedule fire or a manual run)."""
    if item.event == SCHEDULE_EVENT:
        return await _schedule(pipeline, item, payload)
    provider = pipeline.providers.get(item.provider)
    if item.event == DISPATCH_EVENT and provider is not None:
        return await _dispatch(pipeline, item, payload, source, provider)
    return _outcome("received", f"internal event {item.event!r} for {item.provider} is not supported")
