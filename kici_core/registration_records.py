"""Workflows registered from default-branch pushes and their schedules: the records
:class:`kici_core.ports.RegistrationStore` exchanges (lock-file spec §7.3)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kici_core.jsontypes import JSONObject


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleSpec:
    """One ``schedule`` trigger of a registered workflow."""

    trigger_index: int
    cron_expression: str
    timezone: str = "UTC"
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRegistration:
    """A workflow registered from the lock file of a repository's default branch (lock-file spec §7.3)."""

    id: str
    org_id: str
    routing_key: str
    provider: str
    repo_identifier: str
    workflow_name: str
    ref: str
    """The default branch the lock file was read from."""
    sha: str
    """The commit whose lock file was registered (scheduled runs check it out)."""
    repo_url: str
    lock_source: JSONObject
    """The lock file's top-level ``source`` (``{file, export}``)."""
    workflow: JSONObject
    """The workflow object exactly as in the lock file."""
    trigger_types: tuple[str, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()
    delivery_id: str | None = None
    """The push that registered it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A registered schedule with when it fires next and when it last fired."""

    id: str
    registration_id: str
    org_id: str
    routing_key: str
    repo_identifier: str
    workflow_name: str
    trigger_index: int
    cron_expression: str
    timezone: str
    description: str | None = None
    next_fire_at: datetime | None = None
    """None until first computed, or when the expression or time zone is invalid (see ``error``)."""
    last_fire_at: datetime | None = None
    """The time the last fire was due (a missed fire keeps the time it was due)."""
    last_delivery_id: str | None = None
    error: str | None = None
