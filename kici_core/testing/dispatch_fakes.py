"""In-memory :class:`~kici_core.ports.DispatchQueue`, :class:`~kici_core.ports.RunStore` and
:class:`~kici_core.ports.ConcurrencyGroups` (re-exported by :mod:`kici_core.testing.fakes`).

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
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from kici_core import concurrency, errors, fanout, planning
from kici_core.dispatch_records import (
    ConnectedAgent,
    DispatchNotice,
    DispatchRow,
    FinishResult,
    HeldJob,
    JobsQueued,
    Overdue,
    QueuedRow,
    RecoveringRow,
    StartResult,
    UpstreamResult,
    upstream_outputs,
)
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.ports import NewRun

__all__ = ["FakeConcurrencyGroups", "FakeDispatchQueue", "FakeDispatchTables", "FakeRunStore"]

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
                job_id=job.job_id, run_id=run.run_id, name=job.name, base_name=job.base_name,
                matrix_values=job.matrix_values, runs_on=job.runs_on, exclude_labels=job.exclude_labels,
                job_config=job.job_config, status=job.status, needs_satisfied=job.runnable, error=job.reason)
            if job.runnable and job.status == "pending":
                self.enqueue(job.job_id, expires_at=expires_at)

    def enqueue(self, job_id: str, *, expires_at: float | None = None) -> None:
        if job_id in self.queue:
            return
        self._seq += 1
        self.queue[job_id] = FakeQueueRow(job_id=job_id, run_id=self.jobs[job_id].run_id, seq=self._seq,
                                          created_at=self.now(), expires_at=expires_at)

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
        return QueuedRow(job_id=row.job_id, run_id=row.run_id, created_at=row.created_at, expires_at=row.expires_at,
                         attempts=row.attempts, runs_on=job.runs_on, exclude_labels=job.exclude_labels, seq=row.seq)

    def _pending(self) -> list[FakeQueueRow]:
        return sorted((r for r in self.tables.queue.values() if r.status == "pending"), key=lambda r: r.seq)

    async def pending(self, *, ids: Sequence[str] | None = None, limit: int = 10_000) -> list[QueuedRow]:
        self._check()
        wanted = None if ids is None else set(ids)
        return [self._queued(r) for r in self._pending() if wanted is None or r.job_id in wanted][:limit]

    async def pending_positions(self, *, limit: int = 10_000) -> list[tuple[str, int]]:
        self._check()
        return [(r.job_id, r.seq) for r in self._pending()][:limit]

    async def pending_since(self, after_seq: int, *, named: Sequence[str] = (),
                            limit: int = 10_000) -> list[QueuedRow]:
        self._check()
        ids = {n for n in named if _UUID_RE.match(n)}
        return [self._queued(r) for r in self._pending()
                if r.seq > after_seq or r.job_id in ids or r.run_id in ids][:limit]

    def _row(self, job_id: str) -> DispatchRow:
        t = self.tables
        job = t.jobs[job_id]
        run = t.runs[job.run_id].run
        by_name = {j.name: j for j in t.run_jobs(job.run_id)}
        needs = next((n.needs for n in run.jobs if n.job_id == job_id), ())
        ups = sorted((by_name[e.upstream_name] for e in needs if e.upstream_name in by_name), key=lambda u: u.name)
        results = [UpstreamResult(upstream_name=u.name, base_name=u.base_name, status=u.status, outputs=u.outputs,
                                  matrix_values=u.matrix_values) for u in ups]
        return DispatchRow(job_id=job_id, run_id=job.run_id, workflow_name=run.workflow_name, job_name=job.name,
                           base_name=job.base_name, job_config=job.job_config, repo_url=run.repo_url or "",
                           ref=run.ref or "", sha=run.sha or "", provider=run.provider, routing_key=run.routing_key,
                           repo_identifier=run.repo_identifier, request_id=None,
                           upstream_outputs=upstream_outputs(results),
                           upstream_statuses={u.name: u.status for u in ups}, event=run.event)

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
        return {job_id: self._row(job_id) for job_id, agent_id, deadline in claims
                if self._claim(job_id, agent_id, deadline)}

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
        row.status, row.attempts, row.agent_id, row.ack_deadline, row.ack_agent_id = "pending", attempts, None, None, None
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
            if row is not None and ((row.status == "recovering" and row.recovery_agent_id == agent_id)
                                    or (row.status == "dispatched" and row.agent_id == agent_id)):
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
        return [RecoveringRow(job_id=r.job_id, run_id=r.run_id, agent_id=r.recovery_agent_id or "",
                              deadline=r.recovery_deadline or 0.0)
                for r in self.tables.queue.values() if r.status == "recovering"]

    async def overdue(self, *, grace_s: float) -> Overdue:
        self._check()
        limit = self.tables.now() - grace_s
        rows = sorted(self.tables.queue.values(), key=lambda r: r.seq)
        started = ("running", "cancelling")
        return Overdue(
            ack=tuple((r.job_id, r.attempts) for r in rows if r.status == "dispatched" and r.ack_deadline is not None
                      and r.ack_deadline < limit and self.tables.jobs[r.job_id].status not in started),
            recovery=tuple((r.job_id, r.attempts) for r in rows if r.status == "recovering"
                           and r.recovery_deadline is not None and r.recovery_deadline < limit),
            expired=tuple((r.job_id, r.attempts) for r in rows if r.status == "pending"
                          and r.expires_at is not None and r.expires_at < limit))

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

    async def agent_connected(self, *, agent_id: str, labels: Sequence[str], mandatory: Sequence[str],
                              platform: str | None, arch: str | None, version: str | None, hostname: str | None,
                              max_concurrency: int, token_id: str | None, instance_id: str,
                              metadata: JSONObject) -> None:
        self._check()
        old = self.tables.agents.get(agent_id)
        self.tables.agents[agent_id] = FakeAgentRow(
            agent_id=agent_id, labels=tuple(labels), mandatory=tuple(mandatory), instance=instance_id,
            token_id=token_id if token_id is not None else (old.token_id if old else None), metadata=dict(metadata))

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
        return [ConnectedAgent(agent_id=a.agent_id, labels=a.labels, mandatory_labels=a.mandatory,
                               instance=a.instance)
                for a in sorted(self.tables.agents.values(), key=lambda a: a.agent_id) if a.instance is not None]

    async def aclose(self) -> None:
        return None


class FakeRunStore:
    """Runs, jobs, steps and logs in memory. ``steps`` maps ``(job_id, step_index)`` to the step's status;
    ``logs`` holds every appended chunk as ``(job_id, step_index, lines)``."""

    def __init__(self, tables: FakeDispatchTables, queue: FakeDispatchQueue) -> None:
        self.tables = tables
        self.queue = queue
        self.steps: dict[tuple[str, int], str] = {}
        self.logs: list[tuple[str, int, tuple[str, ...]]] = []

    async def job_started(self, job_id: str, *, agent_id: str | None) -> StartResult:
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if job is None or job.status not in ("pending", "queued", "running", "recovering"):
            return StartResult(changed=False)
        job.status, job.started = "running", True
        job.agent_id = agent_id or job.agent_id
        run = self.tables.runs[job.run_id]
        if run.status == "pending":
            run.status = "running"
        return StartResult(changed=True)

    async def set_job_status(self, job_id: str, status: str, *, from_statuses: Sequence[str]) -> bool:
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if job is None or job.status not in from_statuses:
            return False
        job.status = status
        return True

    async def finish_job(self, job_id: str, status: str, *, error: str | None = None, outputs: JSONValue = None,
                         row_status: str = "completed", pending_row_status: str = "expired",
                         require_row: str | None = None) -> FinishResult:
        if status not in planning.TERMINAL_JOB_STATUSES:
            raise errors.InvalidInput(f"{status!r} is not a terminal job status")
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if job is None:
            return FinishResult(changed=False)
        row = self.tables.queue.get(job_id)
        if require_row is not None and (row is None or row.status != require_row):
            return FinishResult(changed=False, run_id=job.run_id)
        if job.status not in ACTIVE_JOB:
            return FinishResult(changed=False, run_id=job.run_id)
        job.status, job.error = status, error or job.error
        if outputs is not None:
            job.outputs = outputs
        if row is not None and row.status in ("pending", "dispatched", "recovering"):
            row.status = pending_row_status if row.status == "pending" else row_status
            row.ack_deadline = row.ack_agent_id = row.recovery_deadline = None
        for key, step in self.steps.items():
            if key[0] == job_id and step in ("running", "pending"):
                self.steps[key] = "cancelled"
        return await self._after_terminal(job.run_id)

    async def _after_terminal(self, run_id: str) -> FinishResult:
        t = self.tables
        jobs = t.run_jobs(run_id)
        run = t.runs[run_id].run
        names = {j.name for j in jobs}
        edges = {n.name: [planning.Edge(upstream=e.upstream_name, run_on=frozenset(e.run_on))
                          for e in n.needs if e.upstream_name in names] for n in run.jobs}
        statuses = {j.name: j.status for j in jobs}
        released = frozenset(j.name for j in jobs if j.needs_satisfied)
        limits = {j.name: fanout.limits_of(j.base_name, j.job_config, child=j.matrix_values is not None)
                  for j in jobs}
        by_name = {j.name: j for j in jobs}
        cancel: list[tuple[str, str]] = []
        for name, reason in fanout.fail_fast_victims(limits, statuses).items():
            victim = by_name[name]
            row = t.queue.get(victim.job_id)
            held = row is not None and row.status in ("dispatched", "recovering")
            if victim.status in ("pending", "queued") and not held:
                victim.status, victim.error, statuses[name] = "cancelled", reason, "cancelled"
                if row is not None and row.status == "pending":
                    row.status = "expired"
            elif held and victim.error is None and victim.status in ("pending", "queued", "running", "recovering"):
                victim.error = reason
                if victim.status == "running":
                    victim.status = "cancelling"
                cancel.append((victim.job_id, reason))
        decision = planning.release(planning.needs_graph(edges), statuses, released=released)
        skipped: list[str] = []
        for skip in decision.skipped:
            job = by_name[skip.job]
            if job.status == "pending":
                job.status, job.error, statuses[skip.job] = "skipped", skip.reason, "skipped"
                skipped.append(job.job_id)
        queued: list[str] = []
        for name in fanout.cap(decision.runnable, limits, statuses, released):
            job = by_name[name]
            if job.status == "pending" and not job.needs_satisfied:
                job.needs_satisfied = True
                t.enqueue(job.job_id)
                queued.append(job.job_id)
        if queued:
            await self.queue.announce(JobsQueued((run_id,)))
        return FinishResult(changed=True, run_id=run_id, queued=tuple(queued), skipped=tuple(skipped),
                            run_status=self._conclude(run_id, statuses), cancel=tuple(cancel))

    def _conclude(self, run_id: str, statuses: Mapping[str, str]) -> str | None:
        conclusion = planning.conclude(statuses)
        run = self.tables.runs[run_id]
        if conclusion is None or run.status in TERMINAL_RUN:
            return None
        run.status = conclusion.status
        run.failure_reason = run.failure_reason or conclusion.description
        return conclusion.status

    async def job_heartbeat(self, job_id: str) -> None:
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if job is not None and job.status == "running":
            job.heartbeats += 1

    async def step_status(self, *, run_id: str, job_id: str, step_index: int, step_name: str, state: str,
                          data: Mapping[str, JSONValue] | None, step_type: str | None,
                          extra: Mapping[str, JSONValue] | None = None) -> bool:
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if job is None or job.run_id != run_id or self.steps.get((job_id, step_index), "pending") not in (
                "running", "pending"):
            return False
        self.steps[(job_id, step_index)] = state
        return True

    async def append_log(self, *, run_id: str, job_id: str, step_index: int, lines: Sequence[str]) -> bool:
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if job is None or job.run_id != run_id:
            return False
        self.logs.append((job_id, step_index, tuple(lines)))
        return True

    async def begin_cancel(self, run_id: str, *, reason: str, cancelled_by: str | None) -> list[HeldJob]:
        self.queue._check()
        run = self.tables.runs.get(run_id)
        if run is None:
            raise errors.NotFound(f"Run {run_id} not found")
        if run.status in TERMINAL_RUN:
            raise errors.Conflict(run.status)
        held: list[HeldJob] = []
        for job in self.tables.run_jobs(run_id):
            row = self.tables.queue.get(job.job_id)
            if row is not None and row.status in ("dispatched", "recovering"):
                held.append(HeldJob(job_id=job.job_id, agent_id=row.agent_id,
                                    recovery_agent_id=row.recovery_agent_id, status=row.status))
            elif job.status in ("pending", "queued"):
                job.status, job.error = "cancelled", reason
            if row is not None and row.status == "pending":
                row.status = "expired"
        run.cancelled_by = run.cancelled_by or cancelled_by
        run.failure_reason = run.failure_reason or reason
        return held

    async def settle_cancel(self, run_id: str, *, reason: str, notified: bool) -> str:
        self.queue._check()
        run = self.tables.runs.get(run_id)
        if run is None or run.status in TERMINAL_RUN:
            return "cancelled" if run is None else run.status
        if notified:
            if run.status in ("pending", "running"):
                run.status = "cancelling"
            return "cancelling"
        for job in self.tables.run_jobs(run_id):
            if job.status in ACTIVE_JOB:
                job.status, job.error = "cancelled", job.error or reason
            row = self.tables.queue.get(job.job_id)
            if row is not None and row.status in ("dispatched", "recovering"):
                row.status = "failed"
        status = self._conclude(run_id, {j.name: j.status for j in self.tables.run_jobs(run_id)})
        if status is None:
            run.status = "cancelled"
        return status or "cancelled"

    async def aclose(self) -> None:
        return None


class FakeConcurrencyGroups:
    """Concurrency-group slots in :attr:`FakeDispatchTables.slots`, decided by :mod:`kici_core.concurrency`."""

    def __init__(self, tables: FakeDispatchTables) -> None:
        self.tables = tables

    def _line(self, rk: str, group: str) -> tuple[list[str], list[str], JSONValue]:
        line = [s for s in self.tables.slots if (s.routing_key, s.group) == (rk, group)
                and s.status in ("holding", "waiting")]
        holders = list(dict.fromkeys(s.run_id for s in line if s.status == "holding"))
        waiting = list(dict.fromkeys(s.run_id for s in line if s.status == "waiting"))
        raw = next((self.tables.jobs[s.job_id].job_config.get("workflowConcurrency") for s in line
                    if s.status == "waiting"), None)
        return holders, waiting, raw

    async def report(self, *, job_id: str, run_id: str, agent_id: str, group: str) -> concurrency.Decision:
        job = self.tables.jobs.get(job_id)
        settings = None if job is None or job.run_id != run_id else concurrency.settings_of(
            job.job_config.get("workflowConcurrency"))
        if settings is None:
            return concurrency.Decision(action="proceed")
        rk = self.tables.runs[run_id].run.routing_key
        holders, waiting, _ = self._line(rk, group)
        decision = concurrency.decide(settings, group=group, run_id=run_id, holders=holders, waiting=waiting)
        for slot in self.tables.slots:
            if ((slot.routing_key, slot.group) == (rk, group) and slot.run_id in decision.supersede
                    and slot.status in ("holding", "waiting")):
                slot.status = "cancelled"
        self.tables.slots = [s for s in self.tables.slots if s.job_id != job_id]
        self.tables.slots.append(FakeSlot(routing_key=rk, group=group, run_id=run_id, job_id=job_id, agent_id=agent_id,
                                          status="holding" if decision.action == "proceed" else "waiting"))
        return decision

    async def release_run(self, run_id: str) -> list[concurrency.Promoted]:
        groups: set[tuple[str, str]] = set()
        for slot in self.tables.slots:
            if slot.run_id == run_id and slot.status in ("holding", "waiting"):
                slot.status = "released"
                groups.add((slot.routing_key, slot.group))
        promoted: list[concurrency.Promoted] = []
        for rk, group in sorted(groups):
            holders, waiting, raw = self._line(rk, group)
            settings = concurrency.settings_of(raw) or concurrency.Settings(cancel_in_progress=False)
            runs = concurrency.promote(settings, holders=holders, waiting=waiting)
            for slot in self.tables.slots:
                if (slot.routing_key, slot.group) == (rk, group) and slot.run_id in runs and slot.status == "waiting":
                    slot.status = "holding"
                    promoted.append(concurrency.Promoted(job_id=slot.job_id, run_id=slot.run_id,
                                                         agent_id=slot.agent_id))
        return promoted

    async def drop_agent(self, agent_id: str) -> int:
        dropped = 0
        for slot in self.tables.slots:
            if slot.agent_id == agent_id and slot.status == "waiting":
                slot.status = "cancelled"
                dropped += 1
        return dropped
