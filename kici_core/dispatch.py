"""Sans-I/O dispatcher for the agents connected to one orchestrator process.

The durable queue lives in the database; this object holds the process's *view* of it (the
pending jobs its driver told it about) and its own agents, and decides which job goes where. Every
input is a method call carrying ``now`` (seconds) and ids; every output is a list of effect values
(:mod:`kici_core.dispatch_effects`) that the driver runs in order. It never reads a clock, makes an
id or touches a socket. Its tables, inspection queries and the transitions its events share (timers, requeue,
disconnect, the fill pass) are in :class:`~kici_core.dispatch_state.DispatchState`, which it extends.

Boundary with the pipeline: only *runnable* jobs reach :meth:`Dispatcher.job_queued`. ``needs``
gating, skip cascades and run conclusion happen before (in the pipeline's transaction); a job
waiting for an upstream is never in this queue.

Rules enforced:

* an agent never holds more dispatched jobs than its ``max_concurrency`` because of a dispatch;
* a job goes only to an agent whose labels admit it (:mod:`kici_core.routing`);
* queued jobs are considered oldest first (``created_at``, then arrival order); each free slot of
  every agent is filled in one pass, not one job per event;
* among eligible agents with a free slot the least loaded wins, ties to the one idle longest;
* a dispatch not acknowledged within ``ack_timeout`` is cancelled, its agent closed with 4031 and
  forgotten, and the job requeued; a job is delivered at most ``max_attempts`` times, then fails;
* a ``job.reject`` means "not now", not a failed delivery: the job is requeued without spending its
  delivery budget. After ``busy`` the agent is *held* (no dispatch to it) until it reports a free slot
  (``agent.status`` with ``activeJobs`` below its capacity, a terminal ``job.status``, a re-register)
  or ``busy_backoff`` passes (doubled for each further ``busy`` in a row, up to ``busy_backoff_max``;
  from the third ``busy`` in a row only the timer lifts the hold, so an agent that keeps contradicting
  itself cannot make a job bounce); after ``draining`` it gets no work until it registers again;
* a job is assigned to at most one agent at a time;
* an agent the auto-scaler started takes one job in its life; one bound to a job takes only that job,
  and that job goes to it first; when it disconnects, its started job fails at once (its container is
  destroyed, there is nothing to reconnect).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from kici_core import dispatch_effects as fx
from kici_core import errors, routing
from kici_core.dispatch_model import AgentEntry, AgentLoad, AgentView, JobEntry, Phase
from kici_core.dispatch_state import DispatchState
from kici_core.states import JobStatus

__all__ = ["AgentLoad", "AgentView", "Dispatcher"]

_TERMINAL_AGENT_STATES = frozenset(str(s) for s in (JobStatus.success, JobStatus.failed, JobStatus.cancelled))


class Dispatcher(DispatchState):
    """The dispatch state machine for one process's agents. See the module docstring."""

    # ---------------------------------------------------------------- queue inputs

    def job_queued(
        self,
        *,
        job_id: str,
        run_id: str,
        selector: routing.JobSelector,
        created_at: float,
        now: float,
        attempts: int = 0,
        expires_at: float | None = None,
    ) -> list[fx.Effect]:
        """A runnable job is pending in the durable queue (new, requeued elsewhere, or found by a
        notification). Known jobs are ignored, so a job is never assigned twice."""
        if job_id in self._jobs:
            return []
        job = JobEntry(
            job_id=job_id,
            run_id=run_id,
            selector=selector,
            order=(created_at, self._next_seq()),
            attempts=attempts,
            expires_at=expires_at,
        )
        self._jobs[job_id] = job
        self._enqueue(job)
        return self._fill(now)

    def job_withdrawn(self, *, job_id: str, now: float) -> list[fx.Effect]:
        """The row is no longer pending for us: another process claimed it, it expired or was
        cancelled in the database, or our ``MarkDispatched`` claim lost. Only queued jobs and
        unacknowledged claims are dropped; started jobs are unaffected."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        if job.phase is Phase.QUEUED:
            self._dequeue(job)
            del self._jobs[job_id]
            return []
        if job.phase is Phase.AWAITING_ACK:
            self._release(job, now)
            del self._jobs[job_id]
            return self._fill(now)
        return []

    def job_recovering(self, *, job_id: str, run_id: str, agent_id: str, deadline: float) -> list[fx.Effect]:
        """Teach the dispatcher a durable ``recovering`` row (after a restart, or before an agent
        that ran elsewhere registers here) so that agent can reclaim it."""
        if job_id in self._jobs:
            return []
        self._jobs[job_id] = JobEntry(
            job_id=job_id,
            run_id=run_id,
            selector=None,
            order=(0.0, self._next_seq()),
            phase=Phase.RECOVERING,
            agent_id=agent_id,
            recovery_deadline=deadline,
        )
        return []

    # ---------------------------------------------------------------- agent inputs

    def agent_registered(
        self,
        *,
        agent_id: str,
        connection_id: str,
        labels: routing.AgentLabels,
        now: float,
        max_concurrency: int = 1,
        in_flight_jobs: Iterable[str] = (),
        scaler_managed: bool = False,
        bound_job_id: str | None = None,
    ) -> list[fx.Effect]:
        """``agent.register`` passed its gates on ``connection_id``.

        A new connection for a known ``agent_id`` supersedes the old one (closed with 4003); jobs
        the agent still lists in ``in_flight_jobs`` stay with it, others are handled as if it had
        disconnected. On the same connection it is a refresh: labels and capacity change, the live
        job count is kept. In-flight jobs recovering for this agent are reclaimed; in-flight jobs
        that are not this agent's are cancelled on it. Then ``register.ack``, then the agent is
        filled. ``scaler_managed`` / ``bound_job_id`` (the auto-scaler's binding) are kept from the
        first registration of a connection.

        Raises:
            InvalidInput: ``max_concurrency`` is below 1.
        """
        if max_concurrency < 1:
            raise errors.InvalidInput("maxConcurrency must be at least 1")
        in_flight = list(dict.fromkeys(in_flight_jobs))
        effects: list[fx.Effect] = []
        existing = self._agents.get(agent_id)
        if existing is not None and existing.connection_id == connection_id:
            agent = existing
            agent.labels = labels
            agent.max_concurrency = max_concurrency
            agent.accepting = True
            agent.held_until = None
            self._index.add(agent_id, labels)
        else:
            kept: set[str] = set()
            if existing is not None:
                effects.append(
                    fx.CloseAgent(
                        agent_id=agent_id,
                        connection_id=existing.connection_id,
                        code=fx.CLOSE_SUPERSEDED,
                        reason=fx.REASON_SUPERSEDED,
                    )
                )
                kept = existing.jobs & set(in_flight)
                existing.jobs -= kept
                effects += self._disconnect(existing, now)
            agent = AgentEntry(
                agent_id=agent_id,
                connection_id=connection_id,
                labels=labels,
                max_concurrency=max_concurrency,
                idle_since=now,
                heartbeat_at=now,
                jobs=kept,
                scaler_managed=scaler_managed,
                bound_job_id=bound_job_id if scaler_managed else None,
                jobs_taken=len(kept),
            )
            self._agents[agent_id] = agent
            self._index.add(agent_id, labels)
            heapq.heappush(self._silence, (now + self.config.agent_heartbeat_timeout, agent_id, connection_id))
        for job_id in in_flight:
            job = self._jobs.get(job_id)
            if job is not None and job_id in agent.jobs:
                effects += self._mark_acked(job, now)
            elif job is not None and job.phase is Phase.RECOVERING and job.agent_id == agent_id:
                job.phase = Phase.RUNNING
                job.recovery_deadline = None
                job.heartbeat_at = now
                agent.jobs.add(job_id)
                effects.append(fx.Reclaim(job_id=job_id, agent_id=agent_id))
            else:
                effects.append(fx.SendCancel(agent_id=agent_id, job_id=job_id, reason=fx.REASON_NOT_ASSIGNED))
        effects.append(fx.SendRegisterAck(agent_id=agent_id, connection_id=connection_id))
        self._sync(agent)
        return effects + self._fill(now)

    def agent_heartbeat(self, *, agent_id: str, now: float) -> list[fx.Effect]:
        """A connection ``heartbeat`` from the agent (the only liveness signal for the socket)."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.heartbeat_at = now
        return []

    def agent_status(self, *, agent_id: str, active_jobs: int, now: float) -> list[fx.Effect]:
        """``agent.status``: the agent's own count of running jobs. Advisory (the dispatcher keeps
        its own count), but a count below the agent's capacity lifts a hold left by a ``busy``
        reject (unless that agent said ``busy`` three times in a row: then only the timer does).
        Then free slots are filled."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return []
        if agent.held_until is not None and active_jobs < agent.max_concurrency and agent.busy_streak < 3:
            agent.held_until = None
            self._sync(agent)
        return self._fill(now)

    def agent_gone(self, *, agent_id: str, connection_id: str, now: float) -> list[fx.Effect]:
        """The connection closed. Ignored unless it is the agent's current connection. Jobs not yet
        acknowledged are requeued; started jobs wait ``recovery_grace`` for a reconnect."""
        agent = self._agents.get(agent_id)
        if agent is None or agent.connection_id != connection_id:
            return []
        return self._disconnect(agent, now) + self._fill(now)

    # ---------------------------------------------------------------- job inputs

    def job_acked(self, *, agent_id: str, job_id: str, now: float) -> list[fx.Effect]:
        """``job.ack`` from ``agent_id``; ignored unless the dispatch is this agent's."""
        job = self._owned(agent_id, job_id)
        return [] if job is None else self._mark_acked(job, now)

    def job_rejected(self, *, agent_id: str, job_id: str, reason: str, now: float) -> list[fx.Effect]:
        """``job.reject``: free the slot and requeue the job without spending its delivery budget
        (the agent said "not now"; the job did nothing wrong). After ``busy`` the agent is held (see
        the module docstring), so the job goes to another agent or waits; after ``draining`` the
        agent gets no more work until it registers again."""
        job = self._owned(agent_id, job_id)
        if job is None or job.phase not in (Phase.AWAITING_ACK, Phase.ACKED):
            return []
        agent = self._agents[agent_id]
        if reason == "draining":
            agent.accepting = False
        else:
            agent.busy_streak += 1
            backoff = self.config.busy_backoff * 2 ** min(agent.busy_streak - 1, 16)
            agent.held_until = now + min(backoff, self.config.busy_backoff_max)
            heapq.heappush(self._holds, (agent.held_until, agent_id))
        effects = self._requeue_or_fail(job, f"agent rejected dispatch ({reason})", now, spend=False)
        self._sync(agent)
        return effects + self._fill(now)

    def job_status(self, *, agent_id: str, job_id: str, state: str, now: float) -> list[fx.Effect]:
        """``job.status`` from ``agent_id``. ``running`` settles the ack and starts the heartbeat
        clock; ``success``/``failed``/``cancelled`` free the slot (once) and refill the agent.
        Other states change nothing here."""
        job = self._owned(agent_id, job_id)
        if job is None:
            return []
        if state == JobStatus.running:
            effects = self._mark_acked(job, now)
            self._agents[agent_id].busy_streak = 0
            job.phase = Phase.RUNNING
            job.heartbeat_at = now
            return effects
        if state in _TERMINAL_AGENT_STATES:
            effects = []
            if job.phase is Phase.AWAITING_ACK:
                effects.append(fx.AckResolved(job_id=job_id, agent_id=agent_id))
            agent = self._agents[agent_id]
            agent.held_until = None  # a slot freed on the agent itself
            self._release(job, now)
            del self._jobs[job_id]
            self._remember_completed(job_id, agent_id, now)
            return effects + self._fill(now)
        return []

    def job_heartbeat(self, *, agent_id: str, job_id: str, now: float) -> list[fx.Effect]:
        """``job.heartbeat``: counts only while the job is running on this agent."""
        job = self._owned(agent_id, job_id)
        if job is not None and job.phase is Phase.RUNNING:
            job.heartbeat_at = now
        return []

    def cancel_requested(
        self,
        *,
        reason: str,
        now: float,
        run_id: str | None = None,
        job_id: str | None = None,
        force: bool = False,
    ) -> list[fx.Effect]:
        """Cancel one job or every job of a run known here.

        Queued, unacknowledged and recovering jobs end at once as ``cancelled`` (an unacknowledged
        one also gets a best-effort ``job.cancel``). Started jobs get ``job.cancel`` and keep their
        slot until the agent reports a terminal status. Each ``SendCancel`` is one notified agent.

        Raises:
            InvalidInput: neither or both of ``run_id`` and ``job_id`` given.
        """
        if (run_id is None) == (job_id is None):
            raise errors.InvalidInput("cancel needs exactly one of run_id or job_id")
        if job_id is not None:
            targets = [self._jobs[job_id]] if job_id in self._jobs else []
        else:
            targets = sorted((j for j in self._jobs.values() if j.run_id == run_id), key=lambda j: j.order)
        effects: list[fx.Effect] = []
        freed = False
        for job in targets:
            ended = fx.FailJob(job_id=job.job_id, status=JobStatus.cancelled, reason=reason)
            if job.phase is Phase.QUEUED:
                self._dequeue(job)
                del self._jobs[job.job_id]
                effects.append(ended)
            elif job.phase is Phase.RECOVERING:
                del self._jobs[job.job_id]
                effects.append(ended)
            elif job.phase is Phase.AWAITING_ACK:
                assert job.agent_id is not None
                effects.append(fx.SendCancel(agent_id=job.agent_id, job_id=job.job_id, reason=reason, force=force))
                self._release(job, now)
                del self._jobs[job.job_id]
                effects.append(ended)
                freed = True
            else:
                assert job.agent_id is not None
                job.cancel_reason = reason
                effects.append(fx.SendCancel(agent_id=job.agent_id, job_id=job.job_id, reason=reason, force=force))
        return effects + (self._fill(now) if freed else [])

    # ---------------------------------------------------------------- time

    def tick(self, *, now: float) -> list[fx.Effect]:
        """Run every deadline due at ``now``: ack timeouts, silent connections, recovery windows,
        stale started jobs, queue expiry. Then fill free slots."""
        effects: list[fx.Effect] = []
        effects += self._expire_acks(now)
        while self._holds and self._holds[0][0] <= now:
            until, agent_id = heapq.heappop(self._holds)
            held = self._agents.get(agent_id)
            if held is not None and held.held_until == until:
                held.held_until = None
                self._sync(held)
        for agent in self._silent(now):
            effects.append(
                fx.CloseAgent(
                    agent_id=agent.agent_id,
                    connection_id=agent.connection_id,
                    code=fx.CLOSE_HEARTBEAT_TIMEOUT,
                    reason=fx.REASON_HEARTBEAT_TIMEOUT,
                )
            )
            effects += self._disconnect(agent, now)
        due = [job for job in self._jobs.values() if self._due(job, now)]  # sort only what has work
        for job in sorted(due, key=lambda j: j.order):
            if job.phase is Phase.RECOVERING and job.recovery_deadline is not None and job.recovery_deadline <= now:
                del self._jobs[job.job_id]
                effects.append(
                    fx.FailJob(job_id=job.job_id, status=JobStatus.failed, reason=fx.REASON_RECOVERY_EXPIRED)
                )
            elif job.phase in (Phase.ACKED, Phase.RUNNING):
                effects += self._check_stale(job, now)
            elif job.phase is Phase.QUEUED and job.expires_at is not None and job.expires_at <= now:
                self._dequeue(job)
                del self._jobs[job.job_id]
                effects.append(
                    fx.FailJob(job_id=job.job_id, status=JobStatus.timed_out_stale, reason=fx.REASON_QUEUE_EXPIRED)
                )
        while self._completed and next(iter(self._completed.values()))[1] <= now:
            self._completed.popitem(last=False)
        return effects + self._fill(now)
