"""The dispatcher driver: runs the core :class:`~kici_core.dispatch.Dispatcher` against the dispatch ports and sockets.

The core decides (which job goes to which agent, ack deadlines, requeues, recovery windows, stale jobs);
this module feeds it inputs (pending queue rows found through the queue's notices and a poll, agent sockets,
agent messages, the clock) and executes the effects it returns, in order, under one lock. A notice reads only
rows newer than those already seen (plus the rows it names); a full scan runs once per poll interval to catch
anything else (a requeue by a process that died before announcing it, a commit that landed behind the
watermark). Consecutive dispatches are claimed and loaded at once.

It works only through ports (:class:`~kici_core.ports.DispatchQueue`, :class:`~kici_core.ports.RunStore`,
:class:`~kici_core.ports.ConcurrencyGroups`): the PostgreSQL adapters in production, the in-memory fakes of
:mod:`kici_core.testing.fakes` in unit tests. Clearing a row's ack deadline after ``job.ack`` is written in the
background, batched, outside the lock: while this process lives its core owns the deadline, and the stored
copy only matters to another process's sweep after this one died (by then the row is also past
``ack_timeout`` plus the sweep's grace). Agent reports go to the run store (a terminal job releases its
``needs`` downstreams and concludes the run atomically). Sweeps that act on rows of other (possibly dead)
processes run as a singleton duty so one process does each at a time (ARCHITECTURE §5); their rules are
:mod:`kici_core.dispatch_policy`'s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import anyio

from kici_adapters import metrics
from kici_adapters.agents import wire
from kici_adapters.agents.dispatch_message import build_dispatch
from kici_adapters.agents.endpoint import CLOSE_GOING_AWAY, AgentConnection
from kici_core import concurrency as groups
from kici_core import dispatch_effects as fx
from kici_core import dispatch_policy as policy
from kici_core import errors, routing, scaling
from kici_core.dispatch import Dispatcher
from kici_core.dispatch_records import CancelJob, CancelRun, DispatchRow, JobsQueued, Proceed, QueuedRow
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.ports import ConcurrencyGroups, DispatchQueue, RunStore
from kici_core.states import JobStatus
from kici_runtime.orchestrator import heap

__all__ = ["AgentHub", "CloneToken"]

log = logging.getLogger("kici.dispatch")

CloneToken = Callable[[DispatchRow], Awaitable[str | None]]
"""``row -> installation token`` for the row's source (None: no credential, e.g. a local source)."""
ScalerLookup = Callable[[str], Awaitable[scaling.Binding | None]]
"""``agent id -> binding`` when the auto-scaler started that agent (kici_runtime.orchestrator.scaler), else None."""

SWEEP_DUTY = "dispatch-sweeps"  # the singleton duty of the deadline sweeps
STARTUP_DUTY = "dispatch-startup"
TERMINAL_AGENT_STATES = frozenset({"success", "failed", "cancelled"})
SEQ_OVERLAP = 1000
"""Queue positions re-read below the highest seen after an anonymous ``kici_jobs`` notification, for rows whose
transactions committed out of order. Named notices (the run or job ids a transaction queued) need no
overlap: the rows they name are read by id."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class AgentHub:
    """Per-process agent registry and dispatcher driver (implements the endpoint's ``Hub``).

    Args:
        queue: the dispatch queue (and the shared agent table, and notices between processes).
        runs: the run store.
        concurrency: the workflow concurrency-group slots.
        config: core dispatcher timers.
        instance_id: this process, as written to ``agents.connected_instance``.
        clone_token: mints the clone credential of a row's source.
        clock: wall-clock seconds (deadlines are stored as timestamps).
    """

    def __init__(
        self,
        *,
        queue: DispatchQueue,
        runs: RunStore,
        concurrency: ConcurrencyGroups,
        config: fx.DispatcherConfig | None = None,
        instance_id: str = "local",
        clone_token: CloneToken | None = None,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 5.0,
        sweep_seconds: float = 10.0,
    ) -> None:
        self.queue = queue
        self.runs = runs
        self.core = Dispatcher(config=config)
        self.config = self.core.config
        self.instance_id = instance_id
        self._clone_token = clone_token
        self._clock = clock
        self._poll = poll_seconds
        self._sweep = sweep_seconds
        self._lock = anyio.Lock()
        self._conns: dict[str, AgentConnection] = {}  # connection id -> socket
        self._current: dict[str, AgentConnection] = {}  # agent id -> its current socket
        self._refresh = anyio.Event()
        self._tick = anyio.Event()
        self.sent_dispatches = 0
        self._run_ids: dict[str, str] = {}  # job id -> run id of jobs dispatched here, for job.cancel
        self._seen_seq = 0  # highest dispatch_queue.seq read
        self._named: set[str] = set()  # kici_jobs payloads (job or run ids) not yet read
        self._anonymous = False  # a kici_jobs notification without ids arrived since the last read
        self._full_at: float | None = None  # monotonic time of the last full scan
        self._acked: dict[str, str] = {}  # job id -> agent id: ack deadlines to clear in the database
        self._pending_cancels: list[tuple[str, str]] = []  # failFast cancels found under the lock, sent after
        self.concurrency = concurrency  # --- workflow concurrency groups (job.concurrency.report)
        self._ack_wake = anyio.Event()
        self._settled_agents = 0  # connected agents at the last heap resettle, and disconnects since
        self._gone_since_settle = 0
        # --- auto-scaler hooks (kici_runtime.orchestrator.scaler): which agents it started, and who to tell when
        # one leaves
        self.scaler_lookup: ScalerLookup | None = None
        self.on_agent_gone: Callable[[str], None] | None = None
        self._scaler_conns: dict[str, scaling.Binding] = {}  # connection id -> binding of scaler agents

    # ------------------------------------------------------------------------------------ endpoint Hub
    def token_of(self, agent_id: str) -> str | None:
        conn = self._current.get(agent_id)
        return None if conn is None or conn.token is None else conn.token.id

    async def bind_token(self, agent_id: str, token_id: str) -> bool:
        return await self.queue.bind_agent_token(agent_id, token_id)

    def heartbeat(self, conn: AgentConnection) -> None:
        if conn.agent_id is not None and self._current.get(conn.agent_id) is conn:
            self.core.agent_heartbeat(agent_id=conn.agent_id, now=self._clock())

    async def register(self, conn: AgentConnection, msg: wire.AgentRegister, labels: routing.AgentLabels) -> None:
        in_flight = [j.jobId for j in msg.inFlightJobs]
        reclaimable = await self.queue.reclaimable(msg.agentId, in_flight) if in_flight else []
        binding = self._scaler_conns.get(conn.connection_id)
        if binding is None and not conn.registered and self.scaler_lookup is not None:
            binding = await self._scaler_binding(msg.agentId)
        async with self._lock:
            now = self._clock()
            for job_id, run_id, deadline in reclaimable:
                self.core.job_recovering(
                    job_id=job_id,
                    run_id=run_id,
                    agent_id=msg.agentId,
                    deadline=deadline or now + self.config.recovery_grace,
                )
            self._conns[conn.connection_id] = conn
            previous = self._current.get(msg.agentId)
            self._current[msg.agentId] = conn
            if previous is not None and previous is not conn:
                self._conns.pop(previous.connection_id, None)
                self._conns[previous.connection_id] = previous  # kept until its CloseAgent effect ran
            if binding is not None:
                self._scaler_conns[conn.connection_id] = binding
            effects = self.core.agent_registered(
                agent_id=msg.agentId,
                connection_id=conn.connection_id,
                labels=labels,
                now=now,
                max_concurrency=msg.maxConcurrency or 1,
                in_flight_jobs=in_flight,
                scaler_managed=binding is not None,
                bound_job_id=binding.bound_job_id if binding else None,
            )
            metrics.set_local_agents(self.core.agent_count())
            try:
                await self.queue.agent_connected(
                    agent_id=msg.agentId,
                    labels=sorted(labels.effective),
                    mandatory=sorted(labels.mandatory_labels),
                    platform=msg.platform,
                    arch=msg.arch,
                    version=msg.version,
                    hostname=msg.hostname,
                    max_concurrency=msg.maxConcurrency or 1,
                    token_id=conn.token.id if conn.token else None,
                    instance_id=self.instance_id,
                    metadata={
                        k: v
                        for k, v in msg.model_dump(exclude={"labels", "inFlightJobs", "type"}).items()
                        if v is not None
                    },
                )
            except errors.Unavailable as exc:
                log.warning("could not record agent registration", extra={"agentId": msg.agentId, "error": str(exc)})
            await self._run(effects)
        log.info(
            "Agent registered",
            extra={
                "agentId": msg.agentId,
                "labels": sorted(labels.effective),
                "inFlight": len(in_flight),
                "scalerManaged": binding is not None,
            },
        )

    async def _scaler_binding(self, agent_id: str) -> scaling.Binding | None:
        assert self.scaler_lookup is not None
        try:
            return await self.scaler_lookup(agent_id)
        except errors.Unavailable as exc:
            log.warning("could not look up the scaler binding", extra={"agentId": agent_id, "error": str(exc)})
            return None

    async def gone(self, conn: AgentConnection) -> None:
        agent_id = conn.agent_id
        if agent_id is None:
            return
        async with self._lock:
            self._conns.pop(conn.connection_id, None)
            self._scaler_conns.pop(conn.connection_id, None)
            current = self._current.get(agent_id) is conn
            if current:
                del self._current[agent_id]
            self._gone_since_settle += 1
            effects = self.core.agent_gone(agent_id=agent_id, connection_id=conn.connection_id, now=self._clock())
            metrics.set_local_agents(self.core.agent_count())
            await self._run(effects)
        if current:
            try:
                await self.queue.agent_disconnected(agent_id, instance_id=self.instance_id)
                await self.concurrency.drop_agent(agent_id)  # its waiters leave the concurrency lines
            except errors.Unavailable:
                pass
        log.info("Agent disconnected", extra={"agentId": agent_id, "code": conn.close_code})
        if self.on_agent_gone is not None:
            self.on_agent_gone(agent_id)

    async def handle(self, conn: AgentConnection, msg: dict[str, Any], model: Any) -> None:
        kind = msg.get("type")
        agent_id = conn.agent_id
        assert agent_id is not None
        job_id = msg.get("jobId")
        if isinstance(model, wire.AgentStatus):
            await self._agent_status(agent_id, model)
            return
        if kind in ("config.ack", "agent.log", "run.event", "job.context") or not isinstance(job_id, str):
            return
        if not await self._owns(conn, job_id):
            return
        run_id = str(msg.get("runId", ""))
        if kind == wire.CONCURRENCY_REPORT:
            await self._concurrency_report(conn, agent_id, job_id, run_id, msg)
            return
        if isinstance(model, wire.JobAck):
            await self._core_call(lambda now: self.core.job_acked(agent_id=agent_id, job_id=job_id, now=now))
        elif isinstance(model, wire.JobReject):
            await self._core_call(
                lambda now: self.core.job_rejected(agent_id=agent_id, job_id=job_id, reason=model.reason, now=now)
            )
        elif isinstance(model, wire.JobStatusMsg):
            await self._job_status(agent_id, job_id, model)
        elif isinstance(model, wire.StepStatusMsg):
            await self.runs.step_status(
                run_id=run_id,
                job_id=job_id,
                step_index=model.stepIndex,
                step_name=model.stepName,
                state=model.state,
                data=model.data,
                step_type=model.step_type,
                extra={"secretsAccessed": model.secretsAccessed} if model.secretsAccessed else None,
            )
        elif kind == "log.chunk":
            await self.runs.append_log(
                run_id=run_id, job_id=job_id, step_index=int(msg["stepIndex"]), lines=msg["lines"]
            )
        elif isinstance(model, wire.JobHeartbeat):
            self.core.job_heartbeat(agent_id=agent_id, job_id=job_id, now=self._clock())
            await self.runs.job_heartbeat(job_id)

    async def _agent_status(self, agent_id: str, msg: wire.AgentStatus) -> None:
        """``agent.status``: advisory; the core keeps its own count, but a free slot the agent reports lifts a
        hold left by a ``busy`` reject (spec: trigger a drain when there is spare capacity)."""
        reported = int(msg.activeJobs)
        view = self.core.agent(agent_id)
        if view is not None and reported != len(view.active_jobs):
            log.debug(
                "agent.status disagrees with the dispatcher's count",
                extra={"agentId": agent_id, "reported": reported, "counted": len(view.active_jobs)},
            )
        await self._core_call(lambda now: self.core.agent_status(agent_id=agent_id, active_jobs=reported, now=now))

    async def _owns(self, conn: AgentConnection, job_id: str) -> bool:
        assert conn.agent_id is not None
        if self.core.owns(conn.agent_id, job_id, now=self._clock()) or await self.queue.owned(conn.agent_id, job_id):
            return True
        conn.violations, limit_reached = policy.record_violation(conn.violations, time.monotonic())
        metrics.agent_messages_dropped.labels(reason="job_not_assigned").inc()
        log.warning(
            "dropped a message about a job the agent does not own", extra={"agentId": conn.agent_id, "jobId": job_id}
        )
        if limit_reached:
            await conn.close(CLOSE_GOING_AWAY, policy.violation_close_reason(job_id))
        return False

    async def _job_status(self, agent_id: str, job_id: str, msg: wire.JobStatusMsg) -> None:
        state = msg.state
        if state == "running":
            await self.runs.job_started(job_id, agent_id=agent_id)
            await self._core_call(
                lambda now: self.core.job_status(agent_id=agent_id, job_id=job_id, state=state, now=now)
            )
        elif state in TERMINAL_AGENT_STATES:
            data = msg.data or {}
            error = data.get("error") if isinstance(data.get("error"), str) else None
            outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else None
            result = await self.runs.finish_job(job_id, state, error=error, outputs=outputs)
            self._run_ids.pop(job_id, None)
            await self._core_call(
                lambda now: self.core.job_status(agent_id=agent_id, job_id=job_id, state=state, now=now),
                queued=result.queued,
            )
            await self.cancel_jobs(result.cancel)
            if result.run_status is not None:
                log.info("Run finished", extra={"runId": result.run_id, "status": result.run_status})
                await self.run_ended(str(result.run_id))
        elif state == "cancelling":
            await self.runs.set_job_status(job_id, "cancelling", from_statuses=["running"])

    # ------------------------------------------------------------------------------------ queue inputs
    async def _core_call(self, call: Callable[[float], list[fx.Effect]], *, queued: Sequence[str] = ()) -> None:
        async with self._lock:
            effects = call(self._clock())
            if queued:
                effects += await self._feed(await self.queue.pending(ids=list(queued)))
            await self._run(effects)

    async def _feed(self, rows: Sequence[QueuedRow]) -> list[fx.Effect]:
        """Teach the core pending rows it does not know yet (caller holds the lock)."""
        effects: list[fx.Effect] = []
        for row in rows:
            if self.core.tracks(row.job_id):
                continue
            try:
                selector = routing.compile_selector(row.runs_on, row.exclude_labels)
            except errors.InvalidInput as exc:
                effects.append(
                    fx.FailJob(
                        job_id=row.job_id, status=JobStatus.failed, reason=f"invalid runsOn/excludeLabels: {exc}"
                    )
                )
                continue
            effects += self.core.job_queued(
                job_id=row.job_id,
                run_id=row.run_id,
                selector=selector,
                created_at=row.created_at,
                now=self._clock(),
                attempts=row.attempts,
                expires_at=row.expires_at,
            )
        return effects

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

    def why_waiting(self, job_id: str) -> str | None:
        """The routing explanation for a job queued in this process, if any."""
        explanation = self.core.why_waiting(job_id)
        return None if explanation is None else explanation.message

    def explain(self, runs_on: Sequence[JSONObject], exclude: Sequence[JSONObject]) -> str:
        """Why no connected agent of this process takes a job with these matchers."""
        return self.core.explain(routing.compile_selector(runs_on, exclude)).message

    # ------------------------------------------------------------------------------------ effects
    async def _run(self, effects: list[fx.Effect]) -> None:
        """Execute effects in order (caller holds the lock). A lost claim skips its send and withdraws.

        A run of consecutive ``MarkDispatched``/``SendDispatch`` effects (one fill) is claimed in one statement,
        then sent; what the core answers to lost claims runs after those sends. (The core emits each
        ``SendDispatch`` right after its ``MarkDispatched``, so both always go through the batch.)"""
        work = list(effects)
        while work:
            eff = work.pop(0)
            if isinstance(eff, fx.MarkDispatched):
                batch: list[fx.Effect] = [eff]
                while work and isinstance(work[0], fx.MarkDispatched | fx.SendDispatch):
                    batch.append(work.pop(0))
                work[:0] = await self._dispatch_batch(batch)
                continue
            try:
                more = await self._effect(eff)
            except errors.Unavailable as exc:
                log.warning(
                    "dispatch effect failed: storage unavailable",
                    extra={"effect": type(eff).__name__, "error": str(exc)},
                )
                continue
            work[:0] = more

    async def _dispatch_batch(self, batch: list[fx.Effect]) -> list[fx.Effect]:
        """Claim every ``MarkDispatched`` of ``batch`` at once, then send the won ones in order; returns the
        core's effects for the lost ones (withdrawn: their slots refill)."""
        claims = [(e.job_id, e.agent_id, e.ack_deadline) for e in batch if isinstance(e, fx.MarkDispatched)]
        for job_id, _agent, _deadline in claims:
            self._acked.pop(job_id, None)  # an ack of an earlier dispatch must not clear this one's deadline
        try:
            won = await self.queue.claim_many(claims)
        except errors.Unavailable as exc:
            log.warning("dispatch claim failed: storage unavailable", extra={"jobs": len(claims), "error": str(exc)})
            won = {}
        for eff in batch:
            if isinstance(eff, fx.SendDispatch) and eff.job_id in won:
                await self._send_dispatch(eff.agent_id, eff.job_id, won[eff.job_id])
        more: list[fx.Effect] = []
        for job_id, _agent, _deadline in claims:
            if job_id not in won:
                more += self.core.job_withdrawn(job_id=job_id, now=self._clock())
        return more

    async def _effect(self, eff: fx.Effect) -> list[fx.Effect]:
        if isinstance(eff, fx.SendRegisterAck):
            conn = self._conns.get(eff.connection_id)
            if conn is not None:
                binding = self._scaler_conns.get(eff.connection_id)
                ack: dict[str, JSONValue] = {
                    "type": "register.ack",
                    "agentId": eff.agent_id,
                    "labels": list(conn.wire_labels),
                    "scalerManaged": binding is not None,
                }
                if binding is not None and binding.bound_job_id is not None:
                    ack["pendingDispatch"] = True
                await conn.send(ack)
            return []
        if isinstance(eff, fx.AckResolved):
            self._acked[eff.job_id] = eff.agent_id
            self._ack_wake.set()
            return []
        if isinstance(eff, fx.SendCancel):
            conn = self._current.get(eff.agent_id)
            if conn is not None:
                msg: dict[str, JSONValue] = {
                    "type": "job.cancel",
                    "messageId": str(uuid.uuid4()),
                    "runId": self._run_of(eff.job_id),
                    "jobId": eff.job_id,
                    "reason": eff.reason,
                }
                if eff.force:
                    msg["force"] = True
                await conn.send(msg)
            return []
        if isinstance(eff, fx.CloseAgent):
            conn = self._conns.pop(eff.connection_id, None)
            if conn is not None:
                if self._current.get(eff.agent_id) is conn:
                    del self._current[eff.agent_id]
                await conn.close(eff.code, eff.reason)
            metrics.set_local_agents(self.core.agent_count())
            return []
        if isinstance(eff, fx.Requeue):
            self._run_ids.pop(eff.job_id, None)
            await self.queue.requeue(eff.job_id, attempts=eff.attempts)
            log.info("Job requeued", extra={"jobId": eff.job_id, "attempts": eff.attempts, "context": eff.context})
            return []
        if isinstance(eff, fx.FailJob):
            guard = policy.guard_of(eff.reason)
            self._run_ids.pop(eff.job_id, None)
            result = await self.runs.finish_job(
                eff.job_id, str(eff.status), error=eff.reason, row_status="failed", require_row=guard
            )
            if result.cancel:  # run outside the lock this effect runs under
                self._pending_cancels += result.cancel
            if result.run_status is not None:
                await self.run_ended(str(result.run_id))
            return await self._feed(await self.queue.pending(ids=list(result.queued))) if result.queued else []
        if isinstance(eff, fx.MarkRecovering):
            await self.queue.mark_recovering(eff.job_id, agent_id=eff.agent_id, deadline=eff.deadline)
            return []
        if isinstance(eff, fx.Reclaim):
            if await self.queue.reclaim(eff.job_id, agent_id=eff.agent_id):
                log.info("Job reclaimed", extra={"jobId": eff.job_id, "agentId": eff.agent_id})
            return []
        raise AssertionError(f"unknown effect {eff!r}")

    def _run_of(self, job_id: str) -> str:
        return self._run_ids.get(job_id, "")

    async def _send_dispatch(self, agent_id: str, job_id: str, row: DispatchRow) -> None:
        conn = self._current.get(agent_id)
        if conn is None:
            return
        self._run_ids[job_id] = row.run_id
        try:
            message = await self._dispatch_message(row)
            wire.check_dispatch(message)
        except (errors.KiciError, wire.InvalidMessage) as exc:
            # No credential or a malformed job: fail it now rather than waiting out the ack deadline.
            log.warning("cannot build job.dispatch", extra={"jobId": job_id, "error": str(exc)})
            await self._run(
                self.core.cancel_requested(job_id=job_id, reason=f"dispatch failed: {exc}", now=self._clock())
            )
            return
        if await conn.send(message):
            self.sent_dispatches += 1
            metrics.jobs_dispatched.inc()

    async def _dispatch_message(self, row: DispatchRow) -> dict[str, JSONValue]:
        token = await self._clone_token(row) if self._clone_token is not None else None
        return build_dispatch(row, message_id=str(uuid.uuid4()), now_ms=_now_ms(), token=token)

    # ------------------------------------------------------------------------------------ concurrency groups
    async def _concurrency_report(
        self, conn: AgentConnection, agent_id: str, job_id: str, run_id: str, msg: dict[str, Any]
    ) -> None:
        """Answer ``job.concurrency.report`` (§7.6) at once; superseded runs are cancelled after the answer."""
        group = str(msg["group"])
        try:
            decision = await self.concurrency.report(job_id=job_id, run_id=run_id, agent_id=agent_id, group=group)
        except errors.Unavailable as exc:
            log.warning(
                "concurrency group not evaluated: storage unavailable", extra={"jobId": job_id, "error": str(exc)}
            )
            decision = groups.Decision(
                action="cancel", reason="Concurrency group evaluation failed: storage unavailable"
            )
        reply: dict[str, JSONValue] = {
            "type": "job.concurrency.ack",
            "requestId": msg["messageId"],
            "action": decision.action,
        }
        if decision.reason:
            reply["reason"] = decision.reason
        await conn.send(reply)
        log.info(
            "Concurrency group reported",
            extra={"jobId": job_id, "runId": run_id, "group": group, "action": decision.action},
        )
        for other in decision.supersede:
            try:
                await self.cancel_run(other, reason=groups.superseded_reason(group), cancelled_by="concurrency")
            except (errors.NotFound, errors.Conflict):
                continue  # already gone or finished

    async def run_ended(self, run_id: str) -> None:
        """Free the concurrency groups a finished run held and let the next waiting runs proceed."""
        try:
            promoted = await self.concurrency.release_run(run_id)
        except errors.Unavailable as exc:
            log.warning(
                "concurrency slots not released: storage unavailable", extra={"runId": run_id, "error": str(exc)}
            )
            return
        for p in promoted:
            await self._send_proceed(p.job_id, p.run_id, p.agent_id or "", notify=True)

    async def _send_proceed(self, job_id: str, run_id: str, agent_id: str, *, notify: bool) -> None:
        """The unsolicited ``job.concurrency.ack proceed`` (fresh ``requestId``) for a job whose run got a slot;
        through a :class:`~kici_core.dispatch_records.Proceed` notice when its agent is connected to another
        process."""
        conn = self._current.get(agent_id)
        if conn is not None:
            await conn.send(
                {
                    "type": "job.concurrency.ack",
                    "requestId": str(uuid.uuid4()),
                    "action": "proceed",
                    "runId": run_id,
                    "jobId": job_id,
                }
            )
        elif notify:
            await self.queue.announce(Proceed(job_id=job_id, run_id=run_id, agent_id=agent_id))

    # ------------------------------------------------------------------------------------ cancel
    async def cancel_jobs(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Send ``job.cancel`` for ``(job_id, reason)`` pairs (a matrix's failFast): to agents connected here at
        once, through a :class:`~kici_core.dispatch_records.CancelJob` notice to the process holding the others."""
        jobs = [*self._pending_cancels, *jobs]
        self._pending_cancels = []
        for job_id, reason in jobs:
            async with self._lock:
                local = self.core.assignment(job_id) is not None
                if local:
                    await self._run(self.core.cancel_requested(job_id=job_id, reason=reason, now=self._clock()))
            if not local:
                await self.queue.announce(CancelJob(job_id=job_id, reason=reason))

    async def cancel_run(
        self, run_id: str, *, force: bool = False, cancelled_by: str | None = None, reason: str | None = None
    ) -> JSONObject:
        """Cancel a run (spec §9.2). Raises ``NotFound`` / ``Conflict`` (message = the terminal status)."""
        reason = reason or ("force cancelled via API" if force else "run cancelled via API")
        held = await self.runs.begin_cancel(run_id, reason=reason, cancelled_by=cancelled_by)
        notified = await self._cancel_local(run_id, reason, force)
        remote = [h for h in held if self.core.assignment(h.job_id) is None]
        if remote:
            await self.queue.announce(CancelRun(run_id=run_id, force=force, reason=reason))
            connected = {a.agent_id for a in await self.queue.agents()}
            notified += sum(
                1 for h in remote if (h.agent_id or h.recovery_agent_id) in connected and h.status == "dispatched"
            )
        status = await self.runs.settle_cancel(run_id, reason=reason, notified=notified > 0)
        if status in ("success", "failed", "cancelled"):
            await self.run_ended(run_id)
        if notified:
            return {"status": "cancelling", "notified": notified}
        return {"status": status, "cancelledJobs": len(held)}

    async def _cancel_local(self, run_id: str, reason: str, force: bool) -> int:
        async with self._lock:
            effects = self.core.cancel_requested(run_id=run_id, reason=reason, force=force, now=self._clock())
            notified = sum(
                1
                for e in effects
                if isinstance(e, fx.SendCancel)
                and e.agent_id in self._current
                and self.core.assignment(e.job_id) is not None
            )
            await self._run(effects)
            return notified

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
        """Deadlines of rows no live process handles (ack, recovery, queue expiry), under the sweep lock."""
        async with self.queue.singleton(SWEEP_DUTY, self.instance_id) as mine:
            if not mine:
                return
            overdue = await self.queue.overdue(grace_s=policy.SWEEP_GRACE_S)
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
