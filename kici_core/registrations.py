"""Registrations and the deliveries the orchestrator makes itself (lock-file spec §3.5, §7.3).

A push to a repository's default branch registers every workflow of the lock file read at that push
(:func:`registrations_from`); ``schedule`` triggers fire from those registrations only, never from a freshly
fetched lock file. A schedule firing and a manual run are deliveries like any webhook: :func:`schedule_delivery`
and :func:`dispatch_delivery` build them (source ``internal``), so they get an event-log entry, a decision
trace, runs and dispatches through the ordinary pipeline. A schedule's delivery id names the schedule and the
time the fire was due, so a fire is accepted at most once whichever process (or retry) sends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from kici_core import events, lockfile
from kici_core import triggers as t
from kici_core.delivery_records import Delivery
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.registration_records import Schedule, ScheduleSpec, WorkflowRegistration

__all__ = [
    "DISPATCH_EVENT",
    "SCHEDULE_EVENT",
    "LockRegistrations",
    "dispatch_delivery",
    "is_default_branch_push",
    "lock_registrations",
    "registrations_from",
    "schedule_delivery",
    "schedule_delivery_id",
]

SCHEDULE_EVENT = "schedule"
DISPATCH_EVENT = "dispatch"


def is_default_branch_push(event_name: str, event: events.NormalisedEvent) -> bool:
    """True for a branch push (not a tag) to the repository's default branch (``main`` when unnamed)."""
    if event_name != "push" or event.type != "push":
        return False
    repository = event.payload.get("repository")
    default = repository.get("default_branch") if isinstance(repository, Mapping) else None
    return event.target_branch == (default if isinstance(default, str) and default else "main")


def _plain(value: object) -> JSONValue:
    thawed = lockfile.thaw(value)  # type: ignore[arg-type]
    return json.loads(json.dumps(thawed))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class LockRegistrations:
    """What every registration from one lock file shares, whatever push it came with: the lock file's source
    and, per workflow, its name, plain workflow object, trigger kinds and schedules. Build it once per parsed
    lock file (:func:`lock_registrations`); the registrations of each push reuse the same objects."""

    source: JSONObject
    workflows: tuple[tuple[str, JSONObject, tuple[str, ...], tuple[ScheduleSpec, ...]], ...]


def lock_registrations(lock: lockfile.Lockfile) -> LockRegistrations:
    """The push-independent part of :func:`registrations_from` for ``lock``."""
    source = _plain({"file": lock.source.file, **({"export": lock.source.export} if lock.source.export else {})})
    workflows = []
    for workflow in lock.workflows:
        schedules = tuple(
            ScheduleSpec(
                trigger_index=i,
                cron_expression=trig.cron_expression,
                timezone=trig.timezone,
                description=trig.description,
            )
            for i, trig in enumerate(workflow.triggers)
            if isinstance(trig, t.ScheduleTrigger)
        )
        kinds = tuple(dict.fromkeys(trig.kind for trig in workflow.triggers if not isinstance(trig, t.UnknownTrigger)))
        raw = _plain(workflow.raw)
        workflows.append((workflow.name, raw if isinstance(raw, dict) else {}, kinds, schedules))
    return LockRegistrations(source=source if isinstance(source, dict) else {}, workflows=tuple(workflows))


def registrations_from(
    lock: lockfile.Lockfile | LockRegistrations,
    *,
    org_id: str,
    routing_key: str,
    provider: str,
    repo: str,
    ref: str,
    sha: str,
    repo_url: str,
    delivery_id: str | None,
    ids: Callable[[], str],
) -> list[WorkflowRegistration]:
    """One registration per workflow of ``lock`` (read at ``sha`` of the default branch ``ref``); pass the
    lock file's :func:`lock_registrations` to skip converting its workflows again."""
    shared = lock if isinstance(lock, LockRegistrations) else lock_registrations(lock)
    return [
        WorkflowRegistration(
            id=ids(),
            org_id=org_id,
            routing_key=routing_key,
            provider=provider,
            repo_identifier=repo,
            workflow_name=name,
            ref=ref,
            sha=sha,
            repo_url=repo_url,
            lock_source=shared.source,
            workflow=raw,
            trigger_types=kinds,
            schedules=schedules,
            delivery_id=delivery_id,
        )
        for name, raw, kinds, schedules in shared.workflows
    ]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schedule_delivery_id(schedule_id: str, scheduled_at: datetime) -> str:
    """``schedule:<schedule id>:<epoch seconds due>``: one delivery per schedule and due time."""
    return f"schedule:{schedule_id}:{int(scheduled_at.timestamp())}"


def schedule_delivery(schedule: Schedule, *, scheduled_at: datetime, received_at: datetime) -> Delivery:
    """The delivery of one fire of ``schedule``, due at ``scheduled_at``.

    Its payload is the schedule event's payload (``cronExpression`` verbatim, ``timezone``, ``registrationId``,
    ``scheduledAt``, ...); the pipeline adds the trigger's default ``inputs``."""
    payload: JSONObject = {
        "cronExpression": schedule.cron_expression,
        "timezone": schedule.timezone,
        "registrationId": schedule.registration_id,
        "scheduleId": schedule.id,
        "triggerIndex": schedule.trigger_index,
        "workflowName": schedule.workflow_name,
        "scheduledAt": _iso(scheduled_at),
        "firedAt": _iso(received_at),
        "repository": {"full_name": schedule.repo_identifier},
    }
    if schedule.description:
        payload = {**payload, "description": schedule.description}
    provider = "github" if schedule.routing_key.startswith("github:") else "local"
    return Delivery(
        org_id=schedule.org_id,
        delivery_id=schedule_delivery_id(schedule.id, scheduled_at),
        routing_key=schedule.routing_key,
        event=SCHEDULE_EVENT,
        action=None,
        source="internal",
        provider=provider,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        received_at=received_at,
        repo_identifier=schedule.repo_identifier,
        ref=None,
    )


def dispatch_delivery(
    *,
    org_id: str,
    delivery_id: str,
    routing_key: str,
    provider: str,
    repo: str,
    ref: str,
    workflow_name: str,
    dispatch_type: str | None,
    inputs: Mapping[str, JSONValue],
    run_id: str,
    requested_by: str | None,
    received_at: datetime,
) -> Delivery:
    """The delivery of a manual run of ``workflow_name`` at ``ref`` with ``inputs`` (checked by the caller;
    the pipeline checks them again against the lock file it reads). ``run_id`` is the id the run gets."""
    payload: JSONObject = {
        "workflowName": workflow_name,
        "ref": ref,
        "inputs": dict(inputs),
        "runId": run_id,
        "repository": {"full_name": repo},
    }
    if dispatch_type is not None:
        payload = {**payload, "action": dispatch_type}
    if requested_by is not None:
        payload = {**payload, "requestedBy": requested_by}
    return Delivery(
        org_id=org_id,
        delivery_id=delivery_id,
        routing_key=routing_key,
        event=DISPATCH_EVENT,
        action=dispatch_type,
        source="internal",
        provider=provider,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        received_at=received_at,
        repo_identifier=repo,
        ref=ref,
    )
