"""Workflow registrations and schedules in PostgreSQL (``workflow_registrations``, ``workflow_schedules``).

:meth:`PgRegistrations.register` replaces a repository's registrations in one transaction, unless one read
shows they already are the given ones (every delivery of one commit registers the same workflows: only the
first writes). Registration ids are kept per ``(source, repository, workflow)`` and schedule rows per
``(registration, trigger index)``, so a schedule whose expression and time zone did not change keeps its next
and last fire across pushes; a new or changed one gets its next fire computed from the database clock (an
invalid expression or time zone is kept with its ``error`` and never fires). The scheduler reads due rows with
:meth:`PgRegistrations.due` under
:meth:`PgRegistrations.try_lock` and records each fire with :meth:`PgRegistrations.fired`, guarded on the fire
time it read, so a late or repeated update changes nothing.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import psycopg
from psycopg.types.json import Jsonb

from kici_adapters import cron
from kici_adapters.postgres import queries, singletons
from kici_adapters.postgres.pool import Database
from kici_core import errors
from kici_core.registration_records import Schedule, ScheduleSpec, WorkflowRegistration

_SQL = queries.load("registrations.sql")

__all__ = ["PgRegistrations"]

"""Whether a repository's stored registrations are exactly the given ones (delivery id and ids aside)."""


def _schedule(row: Mapping[str, Any]) -> Schedule:
    return Schedule(
        id=str(row["id"]),
        registration_id=str(row["registration_id"]),
        org_id=row["org_id"],
        routing_key=row["routing_key"],
        repo_identifier=row["repo_identifier"],
        workflow_name=row["workflow_name"],
        trigger_index=int(row["trigger_index"]),
        cron_expression=row["cron_expression"],
        timezone=row["timezone"],
        description=row["description"],
        next_fire_at=row["next_fire_at"],
        last_fire_at=row["last_fire_at"],
        last_delivery_id=row["last_delivery_id"],
        error=row["error"],
    )


def _registration(row: Mapping[str, Any], schedules: Sequence[ScheduleSpec]) -> WorkflowRegistration:
    return WorkflowRegistration(
        id=str(row["id"]),
        org_id=row["org_id"],
        routing_key=row["routing_key"],
        provider=row["provider"],
        repo_identifier=row["repo_identifier"],
        workflow_name=row["workflow_name"],
        ref=row["ref"],
        sha=row["sha"],
        repo_url=row["repo_url"],
        lock_source=row["lock_source"] or {},
        workflow=row["workflow"] or {},
        trigger_types=tuple(row["trigger_types"] or ()),
        schedules=tuple(schedules),
        delivery_id=row["delivery_id"],
    )


def first_fire(spec: ScheduleSpec, now: datetime) -> tuple[datetime | None, str | None]:
    """When a new schedule first fires after ``now``, or why it never will."""
    try:
        return cron.next_after(spec.cron_expression, spec.timezone, now), None
    except errors.InvalidInput as exc:
        return None, exc.message


class _WantedTexts:
    """The JSON text :data:`_SAME` reads for each registration, built from parts remembered by the identity of
    the objects every push of one lock file shares (its workflow objects and source): per push only the commit,
    branch and URL are encoded, once. Keeps the objects it saw, so an id is never reused while remembered; at most
    ``max_entries`` and about ``max_bytes`` of text (a larger workflow is encoded every time)."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes  # the objects kept alive are about as large as their texts (times a few)
        self._bytes = 0
        self._parts: OrderedDict[tuple[int, int, str, str, tuple[str, ...]], tuple[object, object, str]] = OrderedDict()

    def _static(self, reg: WorkflowRegistration) -> str:
        key = (id(reg.workflow), id(reg.lock_source), reg.workflow_name, reg.provider, reg.trigger_types)
        found = self._parts.get(key)
        if found is not None and found[0] is reg.workflow and found[1] is reg.lock_source:
            self._parts.move_to_end(key)
            return found[2]
        text = json.dumps(
            {
                "name": reg.workflow_name,
                "provider": reg.provider,
                "lock_source": reg.lock_source,
                "workflow": reg.workflow,
                "types": list(reg.trigger_types),
            },
            separators=(",", ":"),
        )
        text = text[:-1]  # without the closing brace
        if len(text) <= self._max_bytes // 4:
            stale = self._parts.pop(key, None)
            if stale is not None:
                self._bytes -= len(stale[2])
            self._parts[key] = (reg.workflow, reg.lock_source, text)
            self._bytes += len(text)
            while len(self._parts) > self._max or self._bytes > self._max_bytes:
                self._bytes -= len(self._parts.popitem(last=False)[1][2])
        return text

    def __call__(self, workflows: Sequence[WorkflowRegistration]) -> str:
        """A JSON array with one object per registration (the columns :data:`_SAME` compares)."""
        pushed: dict[tuple[str, str, str], str] = {}
        parts = []
        for reg in workflows:
            where = (reg.ref, reg.sha, reg.repo_url)
            tail = pushed.get(where)
            if tail is None:
                tail = pushed[where] = (
                    ","
                    + json.dumps({"ref": reg.ref, "sha": reg.sha, "repo_url": reg.repo_url}, separators=(",", ":"))[1:]
                )
            parts.append(self._static(reg) + tail)
        return "[" + ",".join(parts) + "]"


@dataclass(eq=False, slots=True)
class _Check:
    done: anyio.Event = field(default_factory=anyio.Event)
    same: bool | None = None


class PgRegistrations:
    """The ``RegistrationStore`` port, plus what the scheduler needs (due schedules, fires, its lock)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._wanted = _WantedTexts()
        self._checks: dict[tuple[str, str, str, str], _Check] = {}
        self.unchanged = 0
        """Registrations skipped because the repository's rows already said the same (diagnostics, tests)."""

    async def _same(
        self, *, org_id: str, routing_key: str, repo: str, workflows: Sequence[WorkflowRegistration]
    ) -> bool:
        """Whether the repository's stored registrations already are ``workflows`` (same workflows, commit,
        branch, URL and lock-file source): a push of a commit already registered, redelivered or processed
        again, or many deliveries of one commit."""
        names = [reg.workflow_name for reg in workflows]
        if len(set(names)) != len(names):
            return False
        wanted = self._wanted(workflows)
        # Concurrent deliveries of one commit ask the same question at once: they share one read.
        key = (org_id, routing_key, repo, wanted)
        running = self._checks.get(key)
        if running is not None:
            await running.done.wait()
            if running.same is not None:
                return running.same
        check = self._checks[key] = _Check()
        try:
            async with self._db.connection() as conn:
                await conn.set_autocommit(True)  # a lone read: no transaction to commit afterwards
                try:
                    cur = await conn.execute(
                        _SQL["registrations_unchanged"],
                        {"org_id": org_id, "routing_key": routing_key, "repo": repo, "wanted": wanted},
                    )
                    row = await cur.fetchone()
                finally:
                    with suppress(psycopg.Error):  # a broken connection cannot be switched back (the pool drops it)
                        await conn.set_autocommit(False)
            check.same = row is not None and row["total"] == row["same"] == len(workflows)
            return check.same
        finally:
            check.done.set()
            if self._checks.get(key) is check:
                del self._checks[key]

    async def register(
        self, *, org_id: str, routing_key: str, repo: str, workflows: Sequence[WorkflowRegistration]
    ) -> None:
        # Re-registering what is stored would change nothing but the delivery id; skipping it spares a write
        # transaction that locks the repository's rows (concurrent pushes of one commit would queue on them).
        if workflows and await self._same(org_id=org_id, routing_key=routing_key, repo=repo, workflows=workflows):
            self.unchanged += 1
            return
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["db_now"])
            row = await cur.fetchone()
            assert row is not None
            now: datetime = row["now"]
            # A few round trips whatever the number of workflows (executemany pipelines its statements): the
            # repository's rows stay locked for as short a time as possible.
            kept = [reg.workflow_name for reg in workflows]
            reg_ids: list[str] = []
            if workflows:
                cur = conn.cursor()
                await cur.executemany(
                    _SQL["registration_upsert"],
                    [
                        {
                            "id": reg.id,
                            "org_id": org_id,
                            "routing_key": routing_key,
                            "provider": reg.provider,
                            "repo": repo,
                            "name": reg.workflow_name,
                            "ref": reg.ref,
                            "sha": reg.sha,
                            "repo_url": reg.repo_url,
                            "lock_source": Jsonb(dict(reg.lock_source)),
                            "workflow": Jsonb(dict(reg.workflow)),
                            "types": list(reg.trigger_types),
                            "delivery_id": reg.delivery_id,
                        }
                        for reg in workflows
                    ],
                    returning=True,
                )
                while True:
                    found = await cur.fetchone()
                    assert found is not None
                    reg_ids.append(str(found["id"]))
                    if not cur.nextset():
                        break
            schedules: list[dict[str, object]] = []
            keep_regs: list[str] = []
            keep_index: list[int] = []
            for reg_id, reg in zip(reg_ids, workflows, strict=True):
                for spec in reg.schedules:
                    next_fire, error = first_fire(spec, now)
                    schedules.append(
                        {
                            "reg": reg_id,
                            "index": spec.trigger_index,
                            "cron": spec.cron_expression,
                            "tz": spec.timezone,
                            "description": spec.description,
                            "next": next_fire,
                            "error": error,
                        }
                    )
                    keep_regs.append(reg_id)
                    keep_index.append(spec.trigger_index)
            if schedules:
                await conn.cursor().executemany(_SQL["schedule_upsert"], schedules)
            if reg_ids:
                await conn.execute(_SQL["schedules_drop_unkept"], {"regs": reg_ids, "kr": keep_regs, "ki": keep_index})
            await conn.execute(_SQL["registrations_drop_unkept"], {"rk": routing_key, "repo": repo, "keep": kept})

    async def unregister_repo(self, *, routing_key: str, repo: str) -> int:
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["registrations_drop_repo"], {"rk": routing_key, "repo": repo})
            return cur.rowcount

    async def get(self, registration_id: str) -> WorkflowRegistration | None:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["registration_by_id"], {"id": registration_id})
            row = await cur.fetchone()
            if row is None:
                return None
            cur = await conn.execute(_SQL["registration_schedules"], {"id": row["id"]})
            specs = [
                ScheduleSpec(
                    trigger_index=int(s["trigger_index"]),
                    cron_expression=s["cron_expression"],
                    timezone=s["timezone"],
                    description=s["description"],
                )
                for s in await cur.fetchall()
            ]
        return _registration(row, specs)

    async def list_registrations(self, *, routing_key: str | None = None) -> list[WorkflowRegistration]:
        """Every registration (of one source), by repository and workflow."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["registrations_of_source"], {"rk": routing_key})
            return [_registration(r, ()) for r in await cur.fetchall()]

    async def list_schedules(self, *, routing_key: str | None = None) -> list[Schedule]:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["schedules_of_source"], {"rk": routing_key})
            return [_schedule(r) for r in await cur.fetchall()]

    # ------------------------------------------------------------------------------------ scheduler
    async def due(self, now: datetime, *, limit: int = 100) -> list[Schedule]:
        """Schedules whose next fire is at or before ``now``, earliest first."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["schedules_due"], {"now": now, "limit": limit})
            return [_schedule(r) for r in await cur.fetchall()]

    async def fired(
        self,
        schedule_id: str,
        *,
        due_at: datetime,
        next_fire_at: datetime | None,
        delivery_id: str | None,
        error: str | None = None,
    ) -> bool:
        """Record a fire that was due at ``due_at`` (only if the row still says so) and the next one."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                _SQL["schedule_fired"],
                {"id": schedule_id, "due": due_at, "next": next_fire_at, "delivery": delivery_id, "error": error},
            )
            return cur.rowcount == 1

    @asynccontextmanager
    async def try_lock(self, key: int) -> AsyncIterator[bool]:
        """Hold ``pg_try_advisory_lock(key)`` for the block if it is free; yields whether it was taken."""
        async with singletons.try_lock(self._db, key) as taken:
            yield taken
