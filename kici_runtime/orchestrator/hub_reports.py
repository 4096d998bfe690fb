"""Agent reports to the dispatch driver: job and step status, logs, heartbeats, concurrency groups, cancels.

:class:`HubReports` answers what a connected agent sends about its jobs (after checking the agent owns the job):
acks and rejects go to the core, job and step status and log chunks to the run store (a terminal job releases its
``needs`` downstreams and concludes the run atomically), ``job.concurrency.report`` is answered at once. It also
cancels jobs and runs (spec §9.2): on agents connected here directly, through a notice to the process holding the
others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from kici_adapters import metrics
from kici_adapters.agents import wire
from kici_adapters.agents.endpoint import CLOSE_GOING_AWAY, AgentConnection
from kici_core import concurrency as groups
from kici_core import dispatch_effects as fx
from kici_core import dispatch_policy as policy
from kici_core import errors
from kici_core.dispatch_records import CancelJob, CancelRun
from kici_core.jsontypes import JSONObject, JSONValue
from kici_runtime.orchestrator.hub_effects import HubEffects

__all__ = ["TERMINAL_AGENT_STATES", "HubReports"]

log = logging.getLogger("kici.dispatch")

TERMINAL_AGENT_STATES = frozenset({"success", "failed", "cancelled"})


class HubReports(HubEffects):
    """Agent messages about jobs, and job and run cancellation."""

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
