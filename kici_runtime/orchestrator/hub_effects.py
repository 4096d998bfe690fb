"""The dispatch driver's state and effect execution: the base class of the dispatcher's ``AgentHub``.

:class:`HubEffects` holds the per-process state of the driver (the core :class:`~kici_core.dispatch.Dispatcher`,
the agent sockets, the queue read position, the ack deadlines still to clear) and executes, in order and under
the caller's lock, the effects the core returns: claims (consecutive dispatches claimed and loaded in one
statement), ``job.dispatch`` / ``job.cancel`` / ``register.ack`` sends, requeues, failures, recovery marks. It
also teaches the core pending rows (:meth:`HubEffects._feed`) and frees a finished run's concurrency groups
(:meth:`HubEffects.run_ended`), both of which effects need.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio

from kici_adapters import metrics
from kici_adapters.agents import wire
from kici_adapters.agents.dispatch_message import build_dispatch
from kici_adapters.agents.endpoint import AgentConnection
from kici_core import dispatch_effects as fx
from kici_core import dispatch_policy as policy
from kici_core import errors, routing, scaling
from kici_core.dispatch import Dispatcher
from kici_core.dispatch_records import DispatchRow, Proceed, QueuedRow
from kici_core.jsontypes import JSONValue
from kici_core.ports import ConcurrencyGroups, DispatchQueue, RunStore
from kici_core.states import JobStatus

__all__ = ["CloneToken", "HubEffects", "ScalerLookup"]

log = logging.getLogger("kici.dispatch")

CloneToken = Callable[[DispatchRow], Awaitable[str | None]]
"""``row -> installation token`` for the row's source (None: no credential, e.g. a local source)."""
ScalerLookup = Callable[[str], Awaitable[scaling.Binding | None]]
"""``agent id -> binding`` when the auto-scaler started that agent (kici_runtime.orchestrator.scaler), else None."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class HubEffects:
    """The driver's state and the execution of the core's effects (arguments: see ``AgentHub``)."""

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
    async def run_ended(self, run_id: str) -> None:
        """Free the concurrency groups a finished run held and let the next waiting runs proceed. Idempotent: the
        dispatch sweep calls it again for an ended run whose slots this call could not release."""
        try:
            promoted = await self.concurrency.release_run(run_id)
        except errors.Unavailable as exc:
            log.warning(
                "concurrency slots not released: storage unavailable; the dispatch sweep releases them later",
                extra={"runId": run_id, "error": str(exc)},
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
