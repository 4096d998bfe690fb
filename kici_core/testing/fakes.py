"""Working in-memory implementations of every port, with inspection fields for tests.

They follow the same contracts as the PostgreSQL adapters (``tests/contract`` runs one suite against both), so a
process wired with fakes behaves like one wired with PostgreSQL, minus durability.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import overload

from kici_core import errors
from kici_core.cluster import ClusterAgent, DutyInfo, InstanceInfo
from kici_core.delivery_records import (
    MAX_CRASHES,
    TERMINAL_DELIVERY_STATUSES,
    AcceptResult,
    Delivery,
    DeliveryOutcome,
    EventLogEntry,
    EventLogQuery,
    InboxItem,
    crash_reason,
)
from kici_core.keys import event_log_payload_key
from kici_core.platform_events import PlatformEvent
from kici_core.registration_records import Schedule, WorkflowRegistration
from kici_core.run_records import NewJob, NewRun, RerunResult
from kici_core.source_records import GenericSource, GitHubSource, LockfileFetch, RepoSource
from kici_core.testing.dispatch_fakes import FakeDispatchQueue as FakeDispatchQueue
from kici_core.testing.dispatch_fakes import FakeDispatchTables as FakeDispatchTables
from kici_core.testing.run_fakes import FakeConcurrencyGroups as FakeConcurrencyGroups
from kici_core.testing.run_fakes import FakeRunStore as FakeRunStore
from kici_core.token_records import AdminToken, AgentToken

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024


def _check_hash(token_hash: str) -> str:
    if not _HASH_RE.match(token_hash):
        raise errors.InvalidInput("token hash must be a lower-case hex sha256 digest")
    return token_hash


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


class FakeBlobStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.durable: dict[str, bool] = {}  # key -> whether its last put asked for durability
        self.fail_puts = False

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        if self.fail_puts:
            raise errors.StorageUnavailable("object storage unavailable")
        self.objects[key] = bytes(data)
        self.durable[key] = durable

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise errors.NotFound(f"object not found: {key}") from None

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class FakeSecretStore:
    """Keeps values in a dict; ``sealed`` shows what a real store would write (never the plaintext)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], str] = {}

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        return self.values.get((org_id, scope, key))

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        self.values[(org_id, scope, key)] = value

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        doomed = [k for k in self.values if k[0] == org_id and k[1] == scope and (key is None or k[2] == key)]
        for k in doomed:
            del self.values[k]
        return len(doomed)


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


@dataclasses.dataclass(slots=True)
class _InboxRow:
    item: InboxItem
    done: bool = False
    locked_until: datetime | None = None
    locked_by: str | None = None
    available_at: datetime | None = None
    crashes: int = 0
    last_error: str | None = None


@dataclasses.dataclass(slots=True)
class FakeRun:
    run: NewRun
    org_id: str
    delivery_id: str
    status: str = "pending"


class FakeDeliveryInbox:
    """Inbox + event log in memory. ``runs`` and ``queue`` show what ``complete`` created.

    Like the PostgreSQL store, ``accept`` keeps the gzipped body with the entry (``pending_payloads``, the
    database copy) and ``offload()`` moves bodies to ``blobs`` under their ``payload_key``, keeping any whose
    write fails for the next pass. With ``offload_on_accept`` (the default) every accept is followed by an
    offload pass, as in a running orchestrator whose offloader is woken by each acceptance; set it False to
    drive offloading by hand. ``fail_accepts`` makes ``accept`` raise ``StorageUnavailable`` (database down).
    """

    def __init__(
        self,
        blobs: FakeBlobStore,
        clock: FakeClock,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        offload_on_accept: bool = True,
    ) -> None:
        self.blobs = blobs
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes
        self.offload_on_accept = offload_on_accept
        self.fail_accepts = False
        self.pending_payloads: dict[tuple[str, str], bytes] = {}
        self.entries: dict[tuple[str, str], EventLogEntry] = {}
        self.rows: dict[tuple[str, str], _InboxRow] = {}
        self.runs: dict[str, FakeRun] = {}
        self.runs_by_delivery: dict[tuple[str, str, str], str] = {}
        self.queue: list[NewJob] = []
        self.notifications = 0

    async def accept(self, delivery: Delivery) -> AcceptResult:
        if self.fail_accepts:
            raise errors.StorageUnavailable("database unavailable")
        key = (delivery.org_id, delivery.delivery_id)
        if key in self.entries:
            return AcceptResult(duplicate=True)
        payload_key: str | None = event_log_payload_key(delivery.org_id, delivery.delivery_id)
        omitted: str | None = None
        if len(delivery.body) > self.max_payload_bytes:
            payload_key, omitted = None, "size_exceeded"
        else:
            self.pending_payloads[key] = gzip.compress(delivery.body)
        self.entries[key] = EventLogEntry(
            org_id=delivery.org_id,
            delivery_id=delivery.delivery_id,
            routing_key=delivery.routing_key,
            event=delivery.event,
            action=delivery.action,
            source=delivery.source,
            provider=delivery.provider,
            repo_identifier=delivery.repo_identifier,
            ref=delivery.ref,
            payload_key=payload_key,
            payload_omitted=omitted is not None,
            payload_omitted_reason=omitted,
            payload_size_bytes=len(delivery.body),
            payload_hash=hashlib.sha256(delivery.body).hexdigest(),
            matched_count=0,
            status="received",
            run_id=None,
            error_message=None,
            received_at=delivery.received_at,
        )
        self.rows[key] = _InboxRow(
            item=InboxItem(
                org_id=delivery.org_id,
                delivery_id=delivery.delivery_id,
                routing_key=delivery.routing_key,
                event=delivery.event,
                action=delivery.action,
                source=delivery.source,
                provider=delivery.provider,
                payload_key=payload_key,
                received_at=delivery.received_at,
                attempts=0,
            )
        )
        if self.offload_on_accept and key in self.pending_payloads:
            await self.offload()
        return AcceptResult(duplicate=False)

    async def offload(self, limit: int = 100) -> tuple[int, int]:
        """Move up to ``limit`` pending bodies to ``blobs``, oldest first; returns ``(moved, failed)``. A body
        whose write fails stays pending."""
        moved = failed = 0
        for key in list(self.pending_payloads)[:limit]:
            entry = self.entries[key]
            assert entry.payload_key is not None
            try:
                await self.blobs.put(entry.payload_key, self.pending_payloads[key])
            except errors.KiciError:
                failed += 1
                continue
            del self.pending_payloads[key]
            moved += 1
        return moved, failed

    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[InboxItem]:
        now = self.clock.now()
        out: list[InboxItem] = []
        for key, row in sorted(self.rows.items(), key=lambda kv: kv[1].item.received_at):
            if len(out) >= limit:
                break
            if row.done or (row.locked_until is not None and row.locked_until > now):
                continue
            if row.available_at is not None and row.available_at > now:
                continue
            if row.locked_until is not None:  # an expired lease: that attempt crashed or timed out
                row.crashes += 1
                row.locked_until, row.locked_by = None, None
            if row.crashes >= MAX_CRASHES:
                row.done = True
                self.entries[key] = dataclasses.replace(
                    self.entries[key], status="failed", error_message=crash_reason(row.crashes, row.last_error)
                )
                continue
            row.item = dataclasses.replace(row.item, attempts=row.item.attempts + 1)
            row.locked_until = now + timedelta(seconds=lease_seconds)
            row.locked_by = worker_id
            self.entries[key] = dataclasses.replace(self.entries[key], attempts=row.item.attempts)
            out.append(row.item)
        return out

    async def release_leases(self, worker_id: str) -> int:
        released = 0
        for row in self.rows.values():
            if not row.done and row.locked_until is not None and row.locked_by == worker_id:
                row.locked_until, row.locked_by = None, None
                row.crashes += 1
                released += 1
        return released

    @overload
    async def payload(self, item: InboxItem) -> bytes: ...

    @overload
    async def payload(self, org_id: str, delivery_id: str, /) -> bytes | None: ...

    async def payload(self, item: InboxItem | str, delivery_id: str | None = None) -> bytes | None:
        """``payload(item)`` (DeliveryInbox: ``NotFound`` when not stored) or ``payload(org_id, delivery_id)``
        (EventLog: None when not stored); the pending copy first, else the object."""
        if isinstance(item, str):
            assert delivery_id is not None
            return await self._read_payload((item, delivery_id))
        if item.payload_key is None:
            raise errors.NotFound("payload was not stored")
        body = await self._read_payload((item.org_id, item.delivery_id))
        if body is None:
            raise errors.NotFound("payload was not stored")
        return body

    async def _read_payload(self, key: tuple[str, str]) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None or entry.payload_key is None:
            return None
        data = self.pending_payloads.get(key)
        if data is None:
            data = await self.blobs.get(entry.payload_key)
        return gzip.decompress(data)

    async def complete(self, item: InboxItem, outcome: DeliveryOutcome, runs: Sequence[NewRun]) -> list[str]:
        key = (item.org_id, item.delivery_id)
        run_ids: list[str] = [rid for (o, d, _w), rid in self.runs_by_delivery.items() if (o, d) == key]
        for run in runs:
            rkey = (item.org_id, item.delivery_id, run.workflow_name)
            if rkey in self.runs_by_delivery:
                continue
            self.runs_by_delivery[rkey] = run.run_id
            self.runs[run.run_id] = FakeRun(run=run, org_id=item.org_id, delivery_id=item.delivery_id)
            self.queue.extend(job for job in run.jobs if job.runnable)
            run_ids.append(run.run_id)
        entry = self.entries[key]
        if entry.status not in TERMINAL_DELIVERY_STATUSES or entry.status == "failed":
            self.entries[key] = dataclasses.replace(
                entry,
                status=outcome.status,
                matched_count=outcome.matched_count,
                repo_identifier=outcome.repo_identifier,
                ref=outcome.ref,
                error_message=outcome.error_message,
                decision_trace=outcome.decision_trace,
                run_id=run_ids[0] if run_ids else None,
            )
        self.rows[key].done = True
        self.rows[key].locked_until = None
        self.notifications += 1
        return run_ids

    async def fail(self, item: InboxItem, error: str, *, retry_after: float | None, crashed: bool = False) -> None:
        key = (item.org_id, item.delivery_id)
        row = self.rows[key]
        row.locked_until = None
        row.last_error = error
        row.crashes += int(crashed)
        if retry_after is None:
            row.done = True
            self.entries[key] = dataclasses.replace(self.entries[key], status="failed", error_message=error)
        else:
            row.available_at = self.clock.now() + timedelta(seconds=retry_after)
            self.entries[key] = dataclasses.replace(self.entries[key], error_message=error)

    async def replay(self, org_id: str, delivery_id: str) -> bool:
        row = self.rows.get((org_id, delivery_id))
        if row is None:
            return False
        row.done = False
        row.locked_until = None
        row.available_at = None
        row.crashes = 0
        row.item = dataclasses.replace(row.item, attempts=0)
        key = (org_id, delivery_id)
        self.entries[key] = dataclasses.replace(self.entries[key], attempts=0)
        return True

    async def depth(self) -> int:
        return sum(1 for r in self.rows.values() if not r.done)

    # -- EventLog (read side) --------------------------------------------------------------------------
    async def list(self, query: EventLogQuery) -> tuple[list[EventLogEntry], int]:
        def keep(e: EventLogEntry) -> bool:
            return (
                (query.org_id is None or e.org_id == query.org_id)
                and (query.routing_key is None or e.routing_key == query.routing_key)
                and (query.event is None or e.event == query.event)
                and (query.action is None or e.action == query.action)
                and (query.status is None or e.status == query.status)
                and (query.since is None or e.received_at >= query.since)
                and (query.until is None or e.received_at < query.until)
                and (query.delivery_id_contains is None or query.delivery_id_contains in e.delivery_id)
                and (query.delivery_id is None or e.delivery_id == query.delivery_id)
            )

        hits = sorted((e for e in self.entries.values() if keep(e)), key=lambda e: e.received_at, reverse=True)
        return hits[query.offset : query.offset + query.limit], len(hits)

    async def get(self, org_id: str | None, delivery_id: str) -> EventLogEntry | None:
        hits = [e for (o, d), e in self.entries.items() if d == delivery_id and (org_id is None or o == org_id)]
        return max(hits, key=lambda e: e.received_at) if hits else None


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


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeAttempt:
    """One attempt of a run in :class:`FakeRunReruns`: job statuses by name, and who asked for it."""

    run_id: str
    root: str
    attempt: int
    status: str
    routing_key: str
    repo: str
    sha: str
    jobs: dict[str, str]
    failed_only: bool = False
    requested_by: str | None = None
    key: str | None = None


class FakeRunReruns:
    """Run attempts in memory. Seed first attempts with :meth:`add_run` (and the check runs pointing at them
    with ``checks[external_id] = run_id``); ``attempts`` holds every attempt, re-runs start ``pending``."""

    def __init__(self, ids: Sequence[str] = ()) -> None:
        self.attempts: dict[str, FakeAttempt] = {}
        self.checks: dict[str, str] = {}
        self._ids = list(ids)

    def add_run(
        self, run_id: str, *, routing_key: str, repo: str, sha: str, status: str, jobs: Mapping[str, str]
    ) -> FakeAttempt:
        attempt = FakeAttempt(
            run_id=run_id,
            root=run_id,
            attempt=1,
            status=status,
            routing_key=routing_key,
            repo=repo,
            sha=sha,
            jobs=dict(jobs),
        )
        self.attempts[run_id] = attempt
        return attempt

    def _latest(self, root: str) -> FakeAttempt:
        return max((a for a in self.attempts.values() if a.root == root), key=lambda a: a.attempt)

    async def rerun(
        self,
        run_id: str,
        *,
        failed_only: bool = False,
        all_when_none_failed: bool = False,
        requested_by: str | None = None,
        key: str | None = None,
    ) -> RerunResult:
        found = self.attempts.get(run_id)
        if found is None:
            raise errors.NotFound(f"Run {run_id} not found")
        root = found.root
        if key is not None:
            key = f"{key}:{root}"
            done = next((a for a in self.attempts.values() if a.key == key), None)
            if done is not None:
                return RerunResult(
                    run_id=done.run_id,
                    original_run_id=root,
                    attempt=done.attempt,
                    rerun_jobs=0,
                    carried_jobs=0,
                    created=False,
                )
        latest = self._latest(root)
        if latest.status not in ("success", "failed", "cancelled"):
            raise errors.Conflict(f"attempt {latest.attempt} of run {root} is still {latest.status}")
        carry = failed_only and any(s != "success" for s in latest.jobs.values())
        if failed_only and not carry and not all_when_none_failed:
            raise errors.Conflict(f"nothing to re-run: every job of attempt {latest.attempt} succeeded")
        jobs = {n: ("success" if carry and s == "success" else "pending") for n, s in latest.jobs.items()}
        new_id = self._ids.pop(0) if self._ids else f"{root}-attempt-{latest.attempt + 1}"
        self.attempts[new_id] = FakeAttempt(
            run_id=new_id,
            root=root,
            attempt=latest.attempt + 1,
            status="pending",
            routing_key=latest.routing_key,
            repo=latest.repo,
            sha=latest.sha,
            jobs=jobs,
            failed_only=carry,
            requested_by=requested_by,
            key=key,
        )
        rerun = sum(1 for s in jobs.values() if s == "pending")
        return RerunResult(
            run_id=new_id,
            original_run_id=root,
            attempt=latest.attempt + 1,
            rerun_jobs=rerun,
            carried_jobs=len(jobs) - rerun,
        )

    async def runs_at_commit(self, routing_key: str, repo: str, sha: str) -> list[tuple[str, str]]:
        roots = sorted(
            {a.root for a in self.attempts.values() if (a.routing_key, a.repo, a.sha) == (routing_key, repo, sha)}
        )
        return [(latest.run_id, latest.status) for latest in map(self._latest, roots)]

    async def run_for_check(self, routing_key: str, external_id: str) -> str | None:
        run_id = self.checks.get(external_id)
        found = self.attempts.get(run_id) if run_id is not None else None
        return run_id if found is not None and found.routing_key == routing_key else None


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


class FakePlatformLink:
    def __init__(self) -> None:
        self.published: list[PlatformEvent] = []

    async def publish(self, event: PlatformEvent) -> None:
        self.published.append(event)


class FakeTokenStore:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self._clock = clock or FakeClock()
        self.admin: dict[str, tuple[AdminToken, str]] = {}
        self.agent: dict[str, tuple[AgentToken, str]] = {}

    async def create_admin_token(self, token: AdminToken, token_hash: str) -> AdminToken:
        _check_hash(token_hash)
        if token.id in self.admin or any(h == token_hash for _, h in self.admin.values()):
            raise errors.Conflict("Conflict: resource already exists")
        stored = dataclasses.replace(token, created_at=token.created_at or self._clock.now())
        self.admin[token.id] = (stored, token_hash)
        return stored

    async def ensure_bootstrap_admin_token(self, token_hash: str, new_id: str) -> bool:
        _check_hash(token_hash)
        same = [tok for tok, h in self.admin.values() if h == token_hash]
        if same:
            if same[0].label != "bootstrap":
                raise errors.Conflict("Conflict: resource already exists")
            if same[0].revoked:
                return False
            self.admin[same[0].id] = (
                dataclasses.replace(same[0], role="owner", routing_key=None, expires_at=None),
                token_hash,
            )
            return True
        active = sorted(
            (tok for tok, _h in self.admin.values() if tok.label == "bootstrap" and not tok.revoked),
            key=lambda t: t.created_at or self._clock.now(),
        )
        if active:
            tok = active[0]
            self.admin[tok.id] = (dataclasses.replace(tok, role="owner", routing_key=None, expires_at=None), token_hash)
            return True
        await self.create_admin_token(AdminToken(id=new_id, label="bootstrap", role="owner"), token_hash)
        return True

    async def has_active_admin_token(self) -> bool:
        return any(not tok.revoked for tok, _ in self.admin.values())

    async def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        now = self._clock.now()
        for tid, (tok, h) in self.admin.items():
            if h == token_hash and not tok.revoked and (tok.expires_at is None or tok.expires_at > now):
                used = dataclasses.replace(tok, last_used_at=now)
                self.admin[tid] = (used, h)
                return used
        return None

    async def list_admin_tokens(self) -> list[AdminToken]:
        # oldest first; ties (a clock that did not move) keep insertion order
        return sorted((t for t, _ in self.admin.values()), key=lambda t: t.created_at or self._clock.now())

    async def revoke_admin_token(self, token_id: str) -> bool:
        found = self.admin.get(token_id)
        if found is None or found[0].revoked:
            return False
        self.admin[token_id] = (dataclasses.replace(found[0], revoked=True), found[1])
        return True

    async def create_agent_token(self, token: AgentToken, token_hash: str) -> AgentToken:
        _check_hash(token_hash)
        if token.id in self.agent or any(h == token_hash for _, h in self.agent.values()):
            raise errors.Conflict("Conflict: resource already exists")
        stored = dataclasses.replace(token, created_at=token.created_at or self._clock.now())
        self.agent[token.id] = (stored, token_hash)
        return stored

    async def agent_token_by_hash(self, token_hash: str) -> AgentToken | None:
        now = self._clock.now()
        for tid, (tok, h) in self.agent.items():
            if h == token_hash and tok.revoked_at is None and (tok.expires_at is None or tok.expires_at > now):
                seen = dataclasses.replace(tok, last_seen_at=now)
                self.agent[tid] = (seen, h)
                return seen
        return None

    async def list_agent_tokens(self) -> list[AgentToken]:
        return sorted(
            (t for t, _ in self.agent.values() if t.revoked_at is None), key=lambda t: t.created_at or self._clock.now()
        )

    async def revoke_agent_token(self, token_id: str) -> bool:
        found = self.agent.get(token_id)
        if found is None or found[0].revoked_at is not None:
            return False
        self.agent[token_id] = (dataclasses.replace(found[0], revoked_at=self._clock.now()), found[1])
        return True


class FakeClusterDirectory:
    """In-memory :class:`~kici_core.ports.ClusterDirectory`: tests set :attr:`agent_list`, :attr:`instance_list`
    and :attr:`duty_list` directly; :attr:`clock` is its "now"."""

    def __init__(self, *, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.agent_list: list[ClusterAgent] = []
        self.instance_list: list[InstanceInfo] = []
        self.duty_list: list[DutyInfo] = []
        self.running_runs = 0

    async def agents(self) -> list[ClusterAgent]:
        return sorted(self.agent_list, key=lambda a: a.agent_id)

    async def instances(self) -> list[InstanceInfo]:
        return list(self.instance_list)

    async def duties(self) -> list[DutyInfo]:
        return list(self.duty_list)

    async def active_runs(self) -> int:
        return self.running_runs

    async def now(self) -> datetime:
        return self.clock.now()
