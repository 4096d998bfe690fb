"""In-memory repository sources, the repository reads (lock files, changed files, clone tokens) and workflow
registrations (re-exported by :mod:`kici_core.testing.fakes`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from kici_core import errors
from kici_core.registration_records import Schedule, WorkflowRegistration
from kici_core.source_records import GenericSource, GitHubSource, LockfileFetch, RepoSource
from kici_core.testing.clock import FakeClock

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


class FakeSourceStore:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.github: dict[str, GitHubSource] = {}
        self.generic: dict[str, GenericSource] = {}
        self._clock = clock or FakeClock()

    async def add_github(self, source: GitHubSource) -> GitHubSource:
        if source.routing_key in self.github:
            raise errors.Conflict("Conflict: resource already exists")
        now = self._clock.now()
        stored = dataclasses.replace(source, created_at=source.created_at or now, updated_at=now)
        self.github[source.routing_key] = stored
        return stored

    async def github_by_routing_key(self, routing_key: str) -> GitHubSource | None:
        return self.github.get(routing_key)

    async def list_github(self) -> list[GitHubSource]:
        return sorted(self.github.values(), key=lambda s: s.routing_key)

    async def update_github(self, source: GitHubSource) -> GitHubSource:
        old = self.github.get(source.routing_key)
        if old is None:
            raise errors.NotFound("Source not found")
        stored = dataclasses.replace(source, created_at=old.created_at, updated_at=self._clock.now())
        self.github[source.routing_key] = stored
        return stored

    async def remove_github(self, routing_key: str) -> bool:
        return self.github.pop(routing_key, None) is not None

    async def add_generic(self, source: GenericSource) -> GenericSource:
        for other in self.generic.values():
            if (
                other.id == source.id
                or other.routing_key == source.routing_key
                or (
                    other.deleted_at is None
                    and source.deleted_at is None
                    and other.org_id == source.org_id
                    and other.name == source.name
                )
            ):
                raise errors.Conflict("Conflict: resource already exists")
        now = self._clock.now()
        stored = dataclasses.replace(source, created_at=source.created_at or now, updated_at=now)
        self.generic[source.id] = stored
        return stored

    async def generic_by_id(self, source_id: str) -> GenericSource | None:
        return self.generic.get(source_id)

    async def generic_by_org_and_name(self, org_id: str, name: str) -> GenericSource | None:
        for s in self.generic.values():
            if s.deleted_at is None and s.org_id == org_id and s.name == name:
                return s
        if _UUID_RE.match(name):
            s2 = self.generic.get(name.lower())
            if s2 is not None and s2.deleted_at is None and s2.org_id == org_id:
                return s2
        return None

    async def list_generic(self, org_id: str | None = None, *, include_deleted: bool = False) -> list[GenericSource]:
        return sorted(
            (
                s
                for s in self.generic.values()
                if (org_id is None or s.org_id == org_id) and (include_deleted or s.deleted_at is None)
            ),
            key=lambda s: (s.org_id, s.name),
        )

    async def update_generic(self, source: GenericSource) -> GenericSource:
        old = self.generic.get(source.id)
        if old is None:
            raise errors.NotFound("Source not found")
        for other in self.generic.values():
            if other.id != source.id and (
                other.routing_key == source.routing_key
                or (
                    other.deleted_at is None
                    and source.deleted_at is None
                    and other.org_id == source.org_id
                    and other.name == source.name
                )
            ):
                raise errors.Conflict("Conflict: resource already exists")
        stored = dataclasses.replace(source, created_at=old.created_at, updated_at=self._clock.now())
        self.generic[source.id] = stored
        return stored

    async def remove_generic(self, source_id: str, *, hard: bool = False) -> bool:
        s = self.generic.get(source_id)
        if s is None:
            return False
        if hard:
            del self.generic[source_id]
        else:
            self.generic[source_id] = dataclasses.replace(
                s, deleted_at=s.deleted_at or self._clock.now(), enabled=False
            )
        return True


class FakeLockfileSource:
    """Lock files keyed by ``(repo, ref)``; ``fail_with`` makes every fetch raise."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.fetches: list[tuple[str, str]] = []
        self.fail_with: Exception | None = None

    async def fetch_lockfile(self, source: RepoSource, repo: str, ref: str) -> LockfileFetch:
        self.fetches.append((repo, ref))
        if self.fail_with is not None:
            raise self.fail_with
        return LockfileFetch(content=self.files.get((repo, ref)))


class FakeChangedFilesSource:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], list[str]] = {}
        self.calls: list[tuple[str, str | None, str, int | None]] = []

    async def changed_files(
        self, source: RepoSource, repo: str, *, base: str | None, head: str, pull_number: int | None = None
    ) -> list[str]:
        self.calls.append((repo, base, head, pull_number))
        return list(self.files.get((repo, head), []))


class FakeCloneTokenSource:
    def __init__(self, token: str | None = "ghs_fake") -> None:
        self.token = token

    async def clone_token(self, source: RepoSource, repo: str) -> str | None:
        return self.token


class FakeRegistrationStore:
    """Registrations in memory (``registrations`` by id). Schedules are listed with no fire times: computing
    them is the database adapter's and the scheduler's business."""

    def __init__(self) -> None:
        self.registrations: dict[str, WorkflowRegistration] = {}

    async def register(
        self, *, org_id: str, routing_key: str, repo: str, workflows: Sequence[WorkflowRegistration]
    ) -> None:
        await self.unregister_repo(routing_key=routing_key, repo=repo)
        for reg in workflows:
            self.registrations[reg.id] = reg

    async def unregister_repo(self, *, routing_key: str, repo: str) -> int:
        gone = [k for k, r in self.registrations.items() if r.routing_key == routing_key and r.repo_identifier == repo]
        for key in gone:
            del self.registrations[key]
        return len(gone)

    async def get(self, registration_id: str) -> WorkflowRegistration | None:
        return self.registrations.get(registration_id)

    async def list_schedules(self, *, routing_key: str | None = None) -> list[Schedule]:
        return [
            Schedule(
                id=f"{r.id}/{s.trigger_index}",
                registration_id=r.id,
                org_id=r.org_id,
                routing_key=r.routing_key,
                repo_identifier=r.repo_identifier,
                workflow_name=r.workflow_name,
                trigger_index=s.trigger_index,
                cron_expression=s.cron_expression,
                timezone=s.timezone,
                description=s.description,
            )
            for r in self.registrations.values()
            if routing_key in (None, r.routing_key)
            for s in r.schedules
        ]
