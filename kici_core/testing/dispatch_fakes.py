"""In-memory :class:`~kici_core.ports.DispatchQueue` (re-exported by :mod:`kici_core.testing.fakes`); the run store
and concurrency groups are in :mod:`kici_core.testing.run_fakes`.

The three share one :class:`FakeDispatchTables` (runs, jobs, queue rows, agents, concurrency slots), as the
PostgreSQL adapters share one database; seed it with :meth:`FakeDispatchTables.add_run`, the records the
delivery inbox stores. Times are epoch seconds of the tables' clock (e.g. ``FakeClock.now``). Notices are delivered
to every open :meth:`FakeDispatchQueue.notices` subscription and kept in :attr:`FakeDispatchQueue.announced`; an
idle subscription polls (keep subscriptions in tests short, or drive the hub's methods directly).
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from kici_core import errors
from kici_core.dispatch_records import (
    ConnectedAgent,
    DispatchNotice,
    DispatchRow,
    JobsQueued,
    Overdue,
    QueuedRow,
    RecoveringRow,
    UpstreamResult,
    upstream_outputs,
)
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.run_records import NewRun

__all__ = ["FakeDispatchQueue", "FakeDispatchTables", "FakeSlot"]

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
ACTIVE_JOB = ("pending", "queued", "running", "recovering", "cancelling")
TERMINAL_RUN = ("success", "failed", "cancelled")


@types.coroutine
def _pass() -> Generator[None]:
    """Let the event loop run other tasks once (a bare yield: asyncio reschedules the task at once)."""
    yield


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeJobRow:
    job_id: str
    run_id: str
    name: str
    base_name: str
    matrix_values: JSONObject | None
    runs_on: tuple[JSONObject, ...]
    exclude_labels: tuple[JSONObject, ...]
    job_config: JSONObject
    status: str = "pending"
    needs_satisfied: bool = False
    agent_id: str | None = None
    attempts: int = 0
    error: str | None = None
    outputs: JSONValue = None
    started: bool = False
    heartbeats: int = 0


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeQueueRow:
    job_id: str
    run_id: str
    seq: int
    created_at: float
    expires_at: float | None = None
    status: str = "pending"
    agent_id: str | None = None
    ack_agent_id: str | None = None
    ack_deadline: float | None = None
    recovery_agent_id: str | None = None
    recovery_deadline: float | None = None
    attempts: int = 0


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeRunRow:
    run: NewRun
    status: str = "pending"
    cancelled_by: str | None = None
    failure_reason: str | None = None


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeAgentRow:
    agent_id: str
    labels: tuple[str, ...] = ()
    mandatory: tuple[str, ...] = ()
    token_id: str | None = None
    instance: str | None = None
    metadata: JSONObject = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeSlot:
    routing_key: str
    group: str
    run_id: str
    job_id: str
    agent_id: str | None
    status: str


class FakeDispatchTables:
    """The shared state; ``live_tokens`` stands in for the agent-token table: the ids of tokens that exist and are
    not revoked (a binding to any other token lapses)."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self.runs: dict[str, FakeRunRow] = {}
        self.jobs: dict[str, FakeJobRow] = {}
        self.queue: dict[str, FakeQueueRow] = {}
        self.agents: dict[str, FakeAgentRow] = {}
        self.slots: list[FakeSlot] = []
        self.live_tokens: set[str] = set()
        self._seq = 0

    def now(self) -> float:
        """Epoch seconds now."""
        return self._now().timestamp()

    def add_run(self, run: NewRun, *, expires_at: float | None = None) -> None:
        """Store a planned run with its jobs; runnable jobs are queued (``expires_at``: their queue expiry)."""
        self.runs[run.run_id] = FakeRunRow(run=run, status=run.status)
        for job in run.jobs:
            self.jobs[job.job_id] = FakeJobRow(
                job_id=job.job_id,
                run_id=run.run_id,
                name=job.name,
                base_name=job.base_name,
                matrix_values=job.matrix_values,
                runs_on=job.runs_on,
                exclude_labels=job.exclude_labels,
                job_config=job.job_config,
                status=job.status,
                needs_satisfied=job.runnable,
                error=job.reason,
            )
            if job.runnable and job.status == "pending":
                self.enqueue(job.job_id, expires_at=expires_at)

    def enqueue(self, job_id: str, *, expires_at: float | None = None) -> None:
        if job_id in self.queue:
            return
        self._seq += 1
        self.queue[job_id] = FakeQueueRow(
            job_id=job_id, run_id=self.jobs[job_id].run_id, seq=self._seq, created_at=self.now(), expires_at=expires_at
        )

    def run_jobs(self, run_id: str) -> list[FakeJobRow]:
        return [j for j in self.jobs.values() if j.run_id == run_id]


class FakeDispatchQueue:
    """The dispatch queue and agent table in memory. ``announced`` lists every notice; ``duties`` the singleton
    duties taken, as ``(duty, holder)``; ``fail_with`` makes every method raise it (storage down)."""

    def __init__(self, tables: FakeDispatchTables) -> None:
        self.tables = tables
        self.announced: list[DispatchNotice] = []
        self.duties: list[tuple[str, str]] = []
        self.held: set[str] = set()
        self.fail_with: errors.KiciError | None = None
        self._listeners: list[list[DispatchNotice]] = []

    def _check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def _queued(self, row: FakeQueueRow) -> QueuedRow:
        job = self.tables.jobs[row.job_id]
        return QueuedRow(
            job_id=row.job_id,
            run_id=row.run_id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            attempts=row.attempts,
            runs_on=job.runs_on,
            exclude_labels=job.exclude_labels,
            seq=row.seq,
        )

    def _pending(self) -> list[FakeQueueRow]:
        return sorted((r for r in self.tables.queue.values() if r.status == "pending"), key=lambda r: r.seq)

    async def pending(self, *, ids: Sequence[str] | None = None, limit: int = 10_000) -> list[QueuedRow]:
        self._check()
        wanted = None if ids is None else set(ids)
        return [self._queued(r) for r in self._pending() if wanted is None or r.job_id in wanted][:limit]

    async def pending_positions(self, *, limit: int = 10_000) -> list[tuple[str, int]]:
        self._check()
        return [(r.job_id, r.seq) for r in self._pending()][:limit]

    async def pending_since(self, after_seq: int, *, named: Sequence[str] = (), limit: int = 10_000) -> list[QueuedRow]:
        self._check()
        ids = {n for n in named if _UUID_RE.match(n)}
        return [self._queued(r) for r in self._pending() if r.seq > after_seq or r.job_id in ids or r.run_id in ids][
            :limit
        ]

    def _row(self, job_id: str) -> DispatchRow:
        t = self.tables
        job = t.jobs[job_id]
        run = t.runs[job.run_id].run
        by_name = {j.name: j for j in t.run_jobs(job.run_id)}
        needs = next((n.needs for n in run.jobs if n.job_id == job_id), ())
        ups = sorted((by_name[e.upstream_name] for e in needs if e.upstream_name in by_name), key=lambda u: u.name)
        results = [
            UpstreamResult(
                upstream_name=u.name,
                base_name=u.base_name,
                status=u.status,
                outputs=u.outputs,
                matrix_values=u.matrix_values,
            )
            for u in ups
        ]
        return DispatchRow(
            job_id=job_id,
            run_id=job.run_id,
            workflow_name=run.workflow_name,
            job_name=job.name,
            base_name=job.base_name,
            job_config=job.job_config,
            repo_url=run.repo_url or "",
            ref=run.ref or "",
            sha=run.sha or "",
            provider=run.provider,
            routing_key=run.routing_key,
            repo_identifier=run.repo_identifier,
            request_id=None,
            upstream_outputs=upstream_outputs(results),
            upstream_statuses={u.name: u.status for u in ups},
            event=run.event,
        )

    def _claim(self, job_id: str, agent_id: str, ack_deadline: float) -> bool:
        row = self.tables.queue.get(job_id)
        if row is None or row.status != "pending":
            return False
        row.status, row.agent_id, row.ack_agent_id, row.ack_deadline = "dispatched", agent_id, agent_id, ack_deadline
        job = self.tables.jobs[job_id]
        if job.status in ("pending", "queued"):
            job.agent_id = agent_id
            job.attempts += 1
        return True

    async def claim_many(self, claims: Sequence[tuple[str, str, float]]) -> dict[str, DispatchRow]:
        self._check()
        return {
            job_id: self._row(job_id)
            for job_id, agent_id, deadline in claims
            if self._claim(job_id, agent_id, deadline)
        }

    async def acks_resolved(self, acks: Sequence[tuple[str, str]]) -> None:
        self._check()
        for job_id, agent_id in acks:
            row = self.tables.queue.get(job_id)
            if row is not None and row.status == "dispatched" and row.agent_id == agent_id:
                row.ack_deadline = row.ack_agent_id = None

    async def requeue(self, job_id: str, *, attempts: int) -> bool:
        self._check()
        row = self.tables.queue.get(job_id)
        if row is None or row.status != "dispatched":
            return False
        row.status, row.attempts, row.agent_id, row.ack_deadline, row.ack_agent_id = (
            "pending",
            attempts,
            None,
            None,
            None,
        )
        job = self.tables.jobs[job_id]
        if job.status in ("pending", "queued"):
            job.agent_id = None
        await self.announce(JobsQueued((job_id,)))
        return True

    async def mark_recovering(self, job_id: str, *, agent_id: str, deadline: float) -> bool:
        self._check()
        row = self.tables.queue.get(job_id)
        if row is None or row.status != "dispatched":
            return False
        row.status, row.recovery_agent_id, row.recovery_deadline = "recovering", agent_id, deadline
        row.ack_deadline = row.ack_agent_id = None
        job = self.tables.jobs[job_id]
        if job.status in ("running", "cancelling"):
            job.status = "recovering"
        return True

    async def reclaim(self, job_id: str, *, agent_id: str) -> bool:
        self._check()
        row = self.tables.queue.get(job_id)
        if row is None or not (row.status == "recovering" or (row.status == "dispatched" and row.agent_id == agent_id)):
            return False
        row.status, row.agent_id = "dispatched", agent_id
        row.recovery_agent_id = row.recovery_deadline = row.ack_deadline = row.ack_agent_id = None
        job = self.tables.jobs[job_id]
        if job.status in ("recovering", "running", "pending", "queued"):
            job.status, job.agent_id, job.started = "running", agent_id, True
        return True

    async def reclaimable(self, agent_id: str, job_ids: Sequence[str]) -> list[tuple[str, str, float | None]]:
        self._check()
        out: list[tuple[str, str, float | None]] = []
        for job_id in job_ids:
            row = self.tables.queue.get(job_id)
            if row is not None and (
                (row.status == "recovering" and row.recovery_agent_id == agent_id)
                or (row.status == "dispatched" and row.agent_id == agent_id)
            ):
                out.append((job_id, row.run_id, row.recovery_deadline))
        return out

    async def owned(self, agent_id: str, job_id: str) -> bool:
        self._check()
        row = self.tables.queue.get(job_id)
        if row is None:
            return False
        if row.status == "recovering":
            return row.recovery_agent_id == agent_id
        return row.status in ("dispatched", "completed", "failed", "expired") and row.agent_id == agent_id

    async def depth(self) -> dict[str, int]:
        self._check()
        counts = {"pending": 0, "dispatched": 0}
        for row in self.tables.queue.values():
            if row.status in counts:
                counts[row.status] += 1
        return counts

    async def orphaned_dispatched(self, instance_id: str) -> list[tuple[str, str, str]]:
        self._check()
        out: list[tuple[str, str, str]] = []
        for row in sorted(self.tables.queue.values(), key=lambda r: r.seq):
            if row.status != "dispatched" or row.agent_id is None:
                continue
            agent = self.tables.agents.get(row.agent_id)
            if agent is None or agent.instance in (None, instance_id):
                out.append((row.job_id, row.run_id, row.agent_id))
        return out

    async def recovering(self) -> list[RecoveringRow]:
        self._check()
        return [
            RecoveringRow(
                job_id=r.job_id,
                run_id=r.run_id,
                agent_id=r.recovery_agent_id or "",
                deadline=r.recovery_deadline or 0.0,
            )
            for r in self.tables.queue.values()
            if r.status == "recovering"
        ]

    async def overdue(self, *, grace_s: float) -> Overdue:
        self._check()
        limit = self.tables.now() - grace_s
        rows = sorted(self.tables.queue.values(), key=lambda r: r.seq)
        started = ("running", "cancelling")
        return Overdue(
            ack=tuple(
                (r.job_id, r.attempts)
                for r in rows
                if r.status == "dispatched"
                and r.ack_deadline is not None
                and r.ack_deadline < limit
                and self.tables.jobs[r.job_id].status not in started
            ),
            recovery=tuple(
                (r.job_id, r.attempts)
                for r in rows
                if r.status == "recovering" and r.recovery_deadline is not None and r.recovery_deadline < limit
            ),
            expired=tuple(
                (r.job_id, r.attempts)
                for r in rows
                if r.status == "pending" and r.expires_at is not None and r.expires_at < limit
            ),
        )

    @asynccontextmanager
    async def singleton(self, duty: str, holder: str) -> AsyncIterator[bool]:
        self._check()
        if duty in self.held:
            yield False
            return
        self.held.add(duty)
        try:
            yield True
            self.duties.append((duty, holder))
        finally:
            self.held.discard(duty)

    async def announce(self, notice: DispatchNotice) -> None:
        self._check()
        self.announced.append(notice)
        for listener in self._listeners:
            listener.append(notice)

    @asynccontextmanager
    async def notices(self) -> AsyncIterator[AsyncIterator[DispatchNotice]]:
        self._check()
        inbox: list[DispatchNotice] = []
        self._listeners.append(inbox)

        async def iterate() -> AsyncIterator[DispatchNotice]:
            while True:  # the core has no event-loop primitives: an idle subscription polls, yielding each time
                if inbox:
                    yield inbox.pop(0)
                else:
                    await _pass()

        try:
            yield iterate()
        finally:
            self._listeners.remove(inbox)

    async def agent_connected(
        self,
        *,
        agent_id: str,
        labels: Sequence[str],
        mandatory: Sequence[str],
        platform: str | None,
        arch: str | None,
        version: str | None,
        hostname: str | None,
        max_concurrency: int,
        token_id: str | None,
        instance_id: str,
        metadata: JSONObject,
    ) -> None:
        self._check()
        old = self.tables.agents.get(agent_id)
        self.tables.agents[agent_id] = FakeAgentRow(
            agent_id=agent_id,
            labels=tuple(labels),
            mandatory=tuple(mandatory),
            instance=instance_id,
            token_id=token_id if token_id is not None else (old.token_id if old else None),
            metadata=dict(metadata),
        )

    async def bind_agent_token(self, agent_id: str, token_id: str) -> bool:
        self._check()
        agent = self.tables.agents.setdefault(agent_id, FakeAgentRow(agent_id=agent_id))
        if agent.token_id in (None, token_id) or agent.token_id not in self.tables.live_tokens:
            agent.token_id = token_id
            return True
        return False

    async def release_agent(self, agent_id: str) -> bool:
        self._check()
        agent = self.tables.agents.get(agent_id)
        if agent is None or agent.token_id is None:
            return False
        agent.token_id = None
        return True

    async def agent_disconnected(self, agent_id: str, *, instance_id: str) -> None:
        self._check()
        agent = self.tables.agents.get(agent_id)
        if agent is not None and agent.instance == instance_id:
            agent.instance = None

    async def release_instance(self, instance_id: str, *, keep: Sequence[str] = ()) -> None:
        self._check()
        for agent in self.tables.agents.values():
            if agent.instance == instance_id and agent.agent_id not in keep:
                agent.instance = None

    async def agents(self) -> list[ConnectedAgent]:
        self._check()
        return [
            ConnectedAgent(agent_id=a.agent_id, labels=a.labels, mandatory_labels=a.mandatory, instance=a.instance)
            for a in sorted(self.tables.agents.values(), key=lambda a: a.agent_id)
            if a.instance is not None
        ]

    async def aclose(self) -> None:
        return None
