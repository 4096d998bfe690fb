"""In-memory :class:`~kici_core.ports.RunStore` and :class:`~kici_core.ports.ConcurrencyGroups` over the tables of
:mod:`kici_core.testing.dispatch_fakes` (re-exported by :mod:`kici_core.testing.fakes`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kici_core import concurrency, errors, fanout, planning
from kici_core.dispatch_records import FinishResult, HeldJob, JobsQueued, StartResult
from kici_core.jsontypes import JSONValue
from kici_core.testing.dispatch_fakes import (
    ACTIVE_JOB,
    TERMINAL_RUN,
    FakeDispatchQueue,
    FakeDispatchTables,
    FakeSlot,
)

__all__ = ["FakeConcurrencyGroups", "FakeRunStore"]


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

    async def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        outputs: JSONValue = None,
        row_status: str = "completed",
        pending_row_status: str = "expired",
        require_row: str | None = None,
    ) -> FinishResult:
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
        edges = {
            n.name: [
                planning.Edge(upstream=e.upstream_name, run_on=frozenset(e.run_on))
                for e in n.needs
                if e.upstream_name in names
            ]
            for n in run.jobs
        }
        statuses = {j.name: j.status for j in jobs}
        released = frozenset(j.name for j in jobs if j.needs_satisfied)
        limits = {j.name: fanout.limits_of(j.base_name, j.job_config, child=j.matrix_values is not None) for j in jobs}
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
        return FinishResult(
            changed=True,
            run_id=run_id,
            queued=tuple(queued),
            skipped=tuple(skipped),
            run_status=self._conclude(run_id, statuses),
            cancel=tuple(cancel),
        )

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

    async def step_status(
        self,
        *,
        run_id: str,
        job_id: str,
        step_index: int,
        step_name: str,
        state: str,
        data: Mapping[str, JSONValue] | None,
        step_type: str | None,
        extra: Mapping[str, JSONValue] | None = None,
    ) -> bool:
        self.queue._check()
        job = self.tables.jobs.get(job_id)
        if (
            job is None
            or job.run_id != run_id
            or self.steps.get((job_id, step_index), "pending") not in ("running", "pending")
        ):
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
                held.append(
                    HeldJob(
                        job_id=job.job_id,
                        agent_id=row.agent_id,
                        recovery_agent_id=row.recovery_agent_id,
                        status=row.status,
                    )
                )
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
        line = [
            s
            for s in self.tables.slots
            if (s.routing_key, s.group) == (rk, group) and s.status in ("holding", "waiting")
        ]
        holders = list(dict.fromkeys(s.run_id for s in line if s.status == "holding"))
        waiting = list(dict.fromkeys(s.run_id for s in line if s.status == "waiting"))
        raw = next(
            (self.tables.jobs[s.job_id].job_config.get("workflowConcurrency") for s in line if s.status == "waiting"),
            None,
        )
        return holders, waiting, raw

    async def report(self, *, job_id: str, run_id: str, agent_id: str, group: str) -> concurrency.Decision:
        job = self.tables.jobs.get(job_id)
        settings = (
            None
            if job is None or job.run_id != run_id
            else concurrency.settings_of(job.job_config.get("workflowConcurrency"))
        )
        if settings is None:
            return concurrency.Decision(action="proceed")
        rk = self.tables.runs[run_id].run.routing_key
        holders, waiting, _ = self._line(rk, group)
        decision = concurrency.decide(settings, group=group, run_id=run_id, holders=holders, waiting=waiting)
        for slot in self.tables.slots:
            if (
                (slot.routing_key, slot.group) == (rk, group)
                and slot.run_id in decision.supersede
                and slot.status in ("holding", "waiting")
            ):
                slot.status = "cancelled"
        self.tables.slots = [s for s in self.tables.slots if s.job_id != job_id]
        self.tables.slots.append(
            FakeSlot(
                routing_key=rk,
                group=group,
                run_id=run_id,
                job_id=job_id,
                agent_id=agent_id,
                status="holding" if decision.action == "proceed" else "waiting",
            )
        )
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
                    promoted.append(
                        concurrency.Promoted(job_id=slot.job_id, run_id=slot.run_id, agent_id=slot.agent_id)
                    )
        return promoted

    async def drop_agent(self, agent_id: str) -> int:
        dropped = 0
        for slot in self.tables.slots:
            if slot.agent_id == agent_id and slot.status == "waiting":
                slot.status = "cancelled"
                dropped += 1
        return dropped

    async def ended_runs_with_slots(self, limit: int) -> list[str]:
        ended = (
            s.run_id
            for s in self.tables.slots
            if s.status in ("holding", "waiting") and self.tables.runs[s.run_id].status in TERMINAL_RUN
        )
        return list(dict.fromkeys(ended))[:limit]
