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

The driver is split by concern: :mod:`~kici_runtime.orchestrator.hub_effects` (state, effect execution),
:mod:`~kici_runtime.orchestrator.hub_reports` (agent reports, cancels),
:mod:`~kici_runtime.orchestrator.hub_loops` (queue reads, background loops, sweeps); this module holds the
agent registry side of the endpoint's ``Hub`` (register, heartbeat, disconnect) and routing explanations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kici_adapters import metrics
from kici_adapters.agents import wire
from kici_adapters.agents.endpoint import AgentConnection
from kici_core import errors, routing, scaling
from kici_core.jsontypes import JSONObject
from kici_runtime.orchestrator.hub_effects import CloneToken
from kici_runtime.orchestrator.hub_loops import HubLoops

__all__ = ["AgentHub", "CloneToken"]

log = logging.getLogger("kici.dispatch")


class AgentHub(HubLoops):
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

    def why_waiting(self, job_id: str) -> str | None:
        """The routing explanation for a job queued in this process, if any."""
        explanation = self.core.why_waiting(job_id)
        return None if explanation is None else explanation.message

    def explain(self, runs_on: Sequence[JSONObject], exclude: Sequence[JSONObject]) -> str:
        """Why no connected agent of this process takes a job with these matchers."""
        return self.core.explain(routing.compile_selector(runs_on, exclude)).message
