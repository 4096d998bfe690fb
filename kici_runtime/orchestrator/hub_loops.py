"""The dispatch driver's background loops: queue reads, notices, the core's clock, sweeps, ack flushes, gauges.

:class:`HubLoops` feeds the core pending queue rows found through the queue's notices and a poll: a notice
reads only rows newer than those already seen (plus the rows it names); a full scan runs once per poll interval
to catch anything else (a requeue by a process that died before announcing it, a commit that landed behind the
watermark). It recovers this instance's rows at startup (§8.5), ticks the core's deadlines, clears acknowledged
ack deadlines in the background, batched, outside the lock, and runs the sweeps that act on rows of other
(possibly dead) processes as a singleton duty so one process does each at a time (ARCHITECTURE §5); their rules
are :mod:`kici_core.dispatch_policy`'s. The sweep also releases the concurrency slots of runs that ended without
releasing them (a crash between the two commits), through the same path as a run that ends here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import suppress

import anyio

from kici_adapters import metrics
from kici_core import dispatch_policy as policy
from kici_core import errors
from kici_core.dispatch_records import CancelJob, CancelRun, JobsQueued, Proceed, QueuedRow
from kici_runtime.orchestrator import heap
from kici_runtime.orchestrator.hub_reports import HubReports

__all__ = ["SEQ_OVERLAP", "SLOT_REPAIR_BATCH", "STARTUP_DUTY", "SWEEP_DUTY", "HubLoops"]

log = logging.getLogger("kici.dispatch")

SWEEP_DUTY = "dispatch-sweeps"  # the singleton duty of the deadline sweeps
STARTUP_DUTY = "dispatch-startup"
SEQ_OVERLAP = 1000
"""Queue positions re-read below the highest seen after an anonymous ``kici_jobs`` notification, for rows whose
transactions committed out of order. Named notices (the run or job ids a transaction queued) need no
overlap: the rows they name are read by id."""
SLOT_REPAIR_BATCH = 100
"""Ended runs whose concurrency slots one sweep releases at most; the next sweep takes the rest."""


class HubLoops(HubReports):
    """Queue reads and the background loops of the driver."""

    # ------------------------------------------------------------------------------------ queue reads
    async def refresh(self) -> None:
        """Load every pending row into the core and dispatch what fits."""
        self._full_at = time.monotonic()
        self._named.clear()
        self._anonymous = False
        positions = await self.queue.pending_positions()
        if positions:
            self._seen_seq = max(self._seen_seq, max(seq for _id, seq in positions))
        unknown = [job_id for job_id, _seq in positions if not self.core.tracks(job_id)]
        rows: list[QueuedRow] = []
        for start in range(0, len(unknown), 1000):
            rows += await self.queue.pending(ids=unknown[start : start + 1000])
        await self._take(rows)

    async def refresh_new(self) -> None:
        """Load the pending rows added since the last read (and those notifications named) and dispatch what
        fits; a full :meth:`refresh` when the last one is older than the poll interval."""
        if self._full_at is None or time.monotonic() - self._full_at >= self._poll:
            await self.refresh()
            return
        named, self._named = list(self._named), set()
        anonymous, self._anonymous = self._anonymous, False
        after = max(0, self._seen_seq - SEQ_OVERLAP) if anonymous else self._seen_seq
        try:
            rows = await self.queue.pending_since(after, named=named)
        except errors.Unavailable:
            self._named.update(named)
            self._anonymous |= anonymous
            raise
        await self._take(rows)

    async def _take(self, rows: Sequence[QueuedRow]) -> None:
        if rows:
            self._seen_seq = max(self._seen_seq, max(r.seq for r in rows))
        async with self._lock:
            await self._run(await self._feed(rows))

    # ------------------------------------------------------------------------------------ loops
    async def startup(self) -> None:
        """Restart recovery (§8.5, Python decision): this instance's previous agents' dispatched rows become
        ``recovering`` so reconnecting agents reclaim them; recovering rows are taught to the core."""
        now = self._clock()
        async with self.queue.singleton(STARTUP_DUTY, self.instance_id):  # taken or not: this instance's rows
            for job_id, _run_id, agent_id in await self.queue.orphaned_dispatched(self.instance_id):
                await self.queue.mark_recovering(job_id, agent_id=agent_id, deadline=now + self.config.recovery_grace)
            await self.queue.release_instance(self.instance_id, keep=list(self._current))  # not those just registered
        async with self._lock:
            for row in await self.queue.recovering():
                if row.agent_id:
                    self.core.job_recovering(
                        job_id=row.job_id, run_id=row.run_id, agent_id=row.agent_id, deadline=row.deadline
                    )

    async def run(self) -> None:
        """Every background loop of the hub, until cancelled."""
        try:
            await self.startup()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                tg.start_soon(self._poller)
                tg.start_soon(self._ticker)
                tg.start_soon(self._sweeper)
                tg.start_soon(self._gauges)
                tg.start_soon(self._ack_flusher)
        finally:
            with anyio.CancelScope(shield=True), suppress(errors.Unavailable):
                with anyio.move_on_after(5):
                    await self.flush_acks()
                await self.queue.aclose()
                await self.runs.aclose()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.queue.notices() as notices:
                    self._full_at = None  # notices may have been missed: the next read is a full scan
                    self._refresh.set()
                    async for notice in notices:
                        await self._on_notice(notice)
            except errors.Unavailable as exc:
                log.warning("dispatch notifications lost; reconnecting", extra={"error": str(exc)})
                await anyio.sleep(1.0)

    async def _on_notice(self, notice: JobsQueued | CancelRun | CancelJob | Proceed) -> None:
        if isinstance(notice, Proceed):
            await self._send_proceed(notice.job_id, notice.run_id, notice.agent_id, notify=False)
        elif isinstance(notice, CancelJob):
            async with self._lock:
                if self.core.assignment(notice.job_id) is not None:
                    await self._run(
                        self.core.cancel_requested(job_id=notice.job_id, reason=notice.reason, now=self._clock())
                    )
        elif isinstance(notice, CancelRun):
            await self._cancel_local(notice.run_id, notice.reason or "run cancelled via API", notice.force)
        else:
            if notice.ids:
                self._named.update(notice.ids)
            else:
                self._anonymous = True
            self._refresh.set()

    async def _poller(self) -> None:
        while True:
            with anyio.move_on_after(self._poll):
                await self._refresh.wait()
            self._refresh = anyio.Event()
            try:
                await self.refresh_new()
            except errors.Unavailable as exc:
                log.warning("could not read the dispatch queue", extra={"error": str(exc)})

    async def _ticker(self) -> None:
        while True:
            now = self._clock()
            deadline = self.core.next_deadline()
            delay = 1.0 if deadline is None else min(1.0, max(0.02, deadline - now))
            await anyio.sleep(delay)
            async with self._lock:
                await self._run(self.core.tick(now=self._clock()))
            if self._pending_cancels:  # failFast cancels found by a job the tick failed
                await self.cancel_jobs(())

    async def sweep_once(self) -> None:
        """Deadlines of rows no live process handles (ack, recovery, queue expiry), and the concurrency slots of
        runs that ended without releasing them, under the sweep lock."""
        async with self.queue.singleton(SWEEP_DUTY, self.instance_id) as mine:
            if not mine:
                return
            overdue = await self.queue.overdue(grace_s=policy.SWEEP_GRACE_S)
            leaked = await self.concurrency.ended_runs_with_slots(SLOT_REPAIR_BATCH)
        for run_id in leaked:
            # The run's end was committed but its slots were not released (the process stopped in between, or
            # the release met an outage): release them now, so waiting runs of its groups get their proceed.
            log.info("releasing the concurrency slots of an ended run", extra={"runId": run_id})
            await self.run_ended(run_id)
        for job_id, attempts in overdue.ack:
            if self.core.assignment(job_id) is not None:
                continue
            action = policy.ack_overdue(job_id, attempts, max_attempts=self.config.max_attempts)
            if isinstance(action, policy.SweepFail):
                await self._fail(action)
            else:
                await self.queue.requeue(job_id, attempts=action.attempts)
        for job_id, _ in overdue.recovery:
            if self.core.assignment(job_id) is None:
                await self._fail(policy.recovery_overdue(job_id))
        for job_id, _ in overdue.expired:
            async with self._lock:
                await self._run(self.core.job_withdrawn(job_id=job_id, now=self._clock()))
            await self._fail(policy.queue_expired(job_id))

    async def _fail(self, action: policy.SweepFail) -> None:
        job_id = action.job_id
        result = await self.runs.finish_job(
            job_id, str(action.status), error=action.reason, row_status="failed", require_row=action.guard
        )
        await self.cancel_jobs(result.cancel)
        if result.run_status is not None:
            await self.run_ended(str(result.run_id))
        if result.queued:
            async with self._lock:
                await self._run(await self._feed(await self.queue.pending(ids=list(result.queued))))

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except errors.Unavailable as exc:
                log.warning("dispatch sweep skipped", extra={"error": str(exc)})
            await anyio.sleep(self._sweep)

    async def flush_acks(self) -> None:
        """Clear, in one statement, the database ack deadlines of every dispatch acknowledged so far."""
        acks, self._acked = self._acked, {}
        try:
            await self.queue.acks_resolved(list(acks.items()))
        except errors.Unavailable:
            self._acked = {**acks, **self._acked}  # kept for the next flush
            raise

    async def _ack_flusher(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake = anyio.Event()
            try:
                await self.flush_acks()
            except errors.Unavailable as exc:
                log.warning("could not clear ack deadlines; retrying", extra={"error": str(exc)})
                await anyio.sleep(1.0)
                self._ack_wake.set()

    async def _gauges(self) -> None:
        while True:
            try:
                for status, n in (await self.queue.depth()).items():
                    metrics.dispatch_queue_depth.labels(status=status).set(n)
            except errors.Unavailable:
                pass
            metrics.set_local_agents(self.core.agent_count())
            self._settle_heap()
            await anyio.sleep(5.0)

    def _settle_heap(self) -> None:
        """Move the connected agents' objects out of the garbage collector's full passes once their number
        changed a lot (:func:`kici_runtime.orchestrator.heap.resettle`), so a pass does not grow with the fleet."""
        connected = self.core.agent_count()
        if heap.should_resettle(connected, self._settled_agents, self._gone_since_settle):
            heap.resettle()
            self._settled_agents, self._gone_since_settle = connected, 0
