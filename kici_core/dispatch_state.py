"""The tables of :class:`~kici_core.dispatch.Dispatcher`, the queries on them and the transitions its events share.

:class:`DispatchState` holds the process's view of the queue (jobs, FIFO order, recently completed jobs), its
agents with the index that chooses among the free ones, and the timer heaps. It answers the dispatcher's
inspection calls (agent snapshots, assignments, ownership, why a job waits, the next deadline); its other methods
are the steps the dispatcher's events are made of: syncing an agent into the index, (de)queueing, releasing and
requeueing a job, forgetting a disconnected agent, ack and staleness deadlines, and the fill pass that assigns
queued jobs to free slots. Like the dispatcher it is pure: every time is the ``now`` it is given, every output an
effect value.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict

from kici_core import dispatch_effects as fx
from kici_core import dispatch_policy as policy
from kici_core import routing
from kici_core.agent_index import AgentIndex
from kici_core.dispatch_model import AgentEntry, AgentLoad, AgentView, JobEntry, Phase
from kici_core.states import JobStatus

__all__ = ["DispatchState"]


class DispatchState:
    """The dispatcher's state, inspection and shared transitions; :class:`~kici_core.dispatch.Dispatcher` adds the
    events."""

    def __init__(self, *, config: fx.DispatcherConfig | None = None) -> None:
        self.config = config or fx.DispatcherConfig()
        self._agents: dict[str, AgentEntry] = {}
        self._jobs: dict[str, JobEntry] = {}
        self._queue: list[tuple[float, int, str]] = []  # sorted FIFO keys of QUEUED jobs
        self._seq = 0
        self._completed: OrderedDict[str, tuple[str, float]] = OrderedDict()  # job -> (agent, until)
        # Free agents by label set and load (the choice among them), and the agents' timers as heaps whose
        # stale entries are skipped when they come due: one per connection for heartbeat silence (refreshed
        # lazily, so a heartbeat costs O(1)), one per busy hold.
        self._index = AgentIndex()
        self._silence: list[tuple[float, str, str]] = []  # (heartbeat deadline, agent, connection)
        self._holds: list[tuple[float, str]] = []  # (held until, agent)
        self._bound: dict[str, dict[str, None]] = {}  # job -> free scaler-managed agents bound to it (in order)
        # Agents whose load (connection, job count, accepting) may have changed, or that left, since
        # load_changes() last ran: the cluster mirror reads these instead of every agent.
        self._load_changed: dict[str, None] = {}

    # ---------------------------------------------------------------- inspection

    def agent(self, agent_id: str) -> AgentView | None:
        """Snapshot of a connected agent, or ``None``."""
        a = self._agents.get(agent_id)
        if a is None:
            return None
        return AgentView(
            agent_id=a.agent_id,
            connection_id=a.connection_id,
            labels=a.labels,
            max_concurrency=a.max_concurrency,
            active_jobs=tuple(sorted(a.jobs)),
            accepting=a.accepting,
            held_until=a.held_until,
            idle_since=a.idle_since,
            scaler_managed=a.scaler_managed,
            bound_job_id=a.bound_job_id,
            jobs_taken=a.jobs_taken,
        )

    def agent_ids(self) -> tuple[str, ...]:
        """Ids of the connected agents, sorted."""
        return tuple(sorted(self._agents))

    def agent_count(self) -> int:
        """How many agents are connected (for ``kici_agents_active``)."""
        return len(self._agents)

    def load_changes(self, *, everything: bool = False) -> dict[str, AgentLoad | None]:
        """The agents whose load may have changed since the last call, with their load now (``None``:
        the agent is no longer connected here), in the order they changed; forgets them. Costs what
        changed, not the number of agents. ``everything`` adds every connected agent (to write the
        whole mirror again)."""
        changed, self._load_changed = self._load_changed, {}
        if everything:
            changed.update(dict.fromkeys(self._agents))
        loads: dict[str, AgentLoad | None] = {}
        for agent_id in changed:
            a = self._agents.get(agent_id)
            loads[agent_id] = None if a is None else AgentLoad(a.connection_id, len(a.jobs), a.accepting)
        return loads

    def best_agent(self, selector: routing.JobSelector) -> str | None:
        """The agent a job with ``selector`` would be dispatched to now, or ``None`` (same rule as
        :func:`routing.choose_agent` over every connected agent, answered from the index)."""
        return self._index.best(selector)

    def queued(self) -> tuple[str, ...]:
        """Job ids waiting in this process's view, oldest first."""
        return tuple(key[2] for key in self._queue)

    def tracks(self, job_id: str) -> bool:
        """Whether ``job_id`` is known here (queued, dispatched, running or recovering)."""
        return job_id in self._jobs

    def assignment(self, job_id: str) -> str | None:
        """The agent a job is dispatched to, recovering for, or ``None``."""
        job = self._jobs.get(job_id)
        return None if job is None or job.phase is Phase.QUEUED else job.agent_id

    def owns(self, agent_id: str, job_id: str, *, now: float) -> bool:
        """Whether a message about ``job_id`` from ``agent_id`` passes the in-memory ownership
        check: the job is assigned or recovering for it, or it finished there within
        ``ownership_grace``. (The driver may still accept it from the database fallback.)"""
        job = self._jobs.get(job_id)
        if job is not None and job.phase is not Phase.QUEUED and job.agent_id == agent_id:
            return True
        done = self._completed.get(job_id)
        return done is not None and done[0] == agent_id and now < done[1]

    def why_waiting(self, job_id: str) -> routing.WaitExplanation | None:
        """Why a queued job has no agent yet, or ``None`` if it is not queued here."""
        job = self._jobs.get(job_id)
        if job is None or job.phase is not Phase.QUEUED or job.selector is None:
            return None
        return self.explain(job.selector)

    def explain(self, selector: routing.JobSelector) -> routing.WaitExplanation:
        """Why no connected agent takes a job with ``selector`` now (including agents held after a
        ``busy`` reject)."""
        return routing.explain_waiting(
            selector,
            {a.agent_id: a.labels for a in self._agents.values()},
            held=[a.agent_id for a in self._agents.values() if a.held_until is not None],
        )

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`tick` has something to do, or ``None``."""
        times: list[float] = []
        for job in self._jobs.values():
            if job.phase is Phase.AWAITING_ACK and job.ack_deadline is not None:
                times.append(job.ack_deadline)
            elif job.phase in (Phase.ACKED, Phase.RUNNING) and job.heartbeat_at is not None:
                times.append(job.heartbeat_at + self.config.stale_after)
            elif job.phase is Phase.RECOVERING and job.recovery_deadline is not None:
                times.append(job.recovery_deadline)
            elif job.phase is Phase.QUEUED and job.expires_at is not None:
                times.append(job.expires_at)
        # Heap heads may be stale (earlier than the real deadline): tick then only refreshes them.
        if self._silence:
            times.append(self._silence[0][0])
        if self._holds:
            times.append(self._holds[0][0])
        return min(times) if times else None

    # ---------------------------------------------------------------- shared transitions

    def _sync(self, agent: AgentEntry) -> None:
        """Tell the index whether ``agent`` (if still connected) can take a job now, and its load. An
        agent the auto-scaler started takes one job in its life; one bound to a job is kept out of the
        index, in ``_bound``, while it waits for that job."""
        if self._agents.get(agent.agent_id) is not agent:
            return
        self._load_changed[agent.agent_id] = None
        free = agent.accepting and agent.held_until is None and len(agent.jobs) < agent.max_concurrency
        if agent.scaler_managed:
            free = free and agent.jobs_taken == 0
            if agent.bound_job_id is not None:
                if free:
                    self._bound.setdefault(agent.bound_job_id, {})[agent.agent_id] = None
                else:
                    self._unbind(agent)
                free = False
        self._index.update(
            agent.agent_id,
            free=free,
            active=len(agent.jobs),
            capacity=agent.max_concurrency,
            idle_since=agent.idle_since,
        )

    def _unbind(self, agent: AgentEntry) -> None:
        """``agent`` no longer waits for the job it is bound to."""
        job_id = agent.bound_job_id
        waiting = None if job_id is None else self._bound.get(job_id)
        if job_id is not None and waiting is not None:
            waiting.pop(agent.agent_id, None)
            if not waiting:
                del self._bound[job_id]

    def _silent(self, now: float) -> list[AgentEntry]:
        """The connected agents whose last heartbeat is older than ``agent_heartbeat_timeout``, by id.
        Entries of closed connections are dropped; entries of agents heard from since are pushed again
        with their new deadline."""
        timeout = self.config.agent_heartbeat_timeout
        silent: list[AgentEntry] = []
        later: list[tuple[float, str, str]] = []
        while self._silence and self._silence[0][0] <= now:
            _, agent_id, connection_id = heapq.heappop(self._silence)
            agent = self._agents.get(agent_id)
            if agent is None or agent.connection_id != connection_id:
                continue
            if now - agent.heartbeat_at > timeout:
                silent.append(agent)
            else:
                later.append((agent.heartbeat_at + timeout, agent_id, connection_id))
        for entry in later:
            heapq.heappush(self._silence, entry)
        return sorted(silent, key=lambda a: a.agent_id)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enqueue(self, job: JobEntry) -> None:
        job.phase = Phase.QUEUED
        job.agent_id = None
        job.ack_deadline = None
        job.heartbeat_at = None
        bisect.insort(self._queue, (*job.order, job.job_id))

    def _dequeue(self, job: JobEntry) -> None:
        key = (*job.order, job.job_id)
        index = bisect.bisect_left(self._queue, key)
        if index < len(self._queue) and self._queue[index] == key:
            del self._queue[index]

    def _owned(self, agent_id: str, job_id: str) -> JobEntry | None:
        agent = self._agents.get(agent_id)
        job = self._jobs.get(job_id)
        if agent is None or job is None or job_id not in agent.jobs:
            return None
        return job

    def _release(self, job: JobEntry, now: float) -> None:
        if job.agent_id is not None and job.agent_id in self._agents:
            agent = self._agents[job.agent_id]
            if job.job_id in agent.jobs:
                agent.jobs.discard(job.job_id)
                agent.idle_since = now
                self._sync(agent)
        job.agent_id = None

    def _remember_completed(self, job_id: str, agent_id: str, now: float) -> None:
        self._completed[job_id] = (agent_id, now + self.config.ownership_grace)
        self._completed.move_to_end(job_id)
        while len(self._completed) > self.config.completed_cap:
            self._completed.popitem(last=False)

    def _mark_acked(self, job: JobEntry, now: float) -> list[fx.Effect]:
        if job.phase is not Phase.AWAITING_ACK:
            return []
        assert job.agent_id is not None
        job.phase = Phase.ACKED
        job.ack_deadline = None
        job.heartbeat_at = now
        if job.agent_id in self._agents:
            self._agents[job.agent_id].busy_streak = 0
        return [fx.AckResolved(job_id=job.job_id, agent_id=job.agent_id)]

    def _requeue_or_fail(self, job: JobEntry, context: str, now: float, *, spend: bool = True) -> list[fx.Effect]:
        """Requeue ``job`` (counting one more delivery when ``spend``), or end it: cancelled when a cancel
        is pending, failed once ``max_attempts`` deliveries were spent."""
        self._release(job, now)
        if spend:
            job.attempts += 1
        if job.cancel_reason is not None:
            del self._jobs[job.job_id]
            return [fx.FailJob(job_id=job.job_id, status=JobStatus.cancelled, reason=job.cancel_reason)]
        if job.selector is None or (spend and policy.attempts_exhausted(job.attempts, self.config.max_attempts)):
            del self._jobs[job.job_id]
            reason = policy.exhausted_reason(job.attempts, context)
            return [fx.FailJob(job_id=job.job_id, status=JobStatus.failed, reason=reason)]
        self._enqueue(job)
        return [fx.Requeue(job_id=job.job_id, attempts=job.attempts, context=context)]

    def _disconnect(self, agent: AgentEntry, now: float) -> list[fx.Effect]:
        """Forget ``agent``; requeue its unacknowledged jobs, put started ones in recovery."""
        if self._agents.get(agent.agent_id) is agent:
            del self._agents[agent.agent_id]
            self._index.remove(agent.agent_id)
            self._unbind(agent)
            self._load_changed[agent.agent_id] = None
        effects: list[fx.Effect] = []
        for job_id in sorted(agent.jobs, key=lambda j: self._jobs[j].order):
            job = self._jobs[job_id]
            if job.phase is Phase.AWAITING_ACK:
                agent.jobs.discard(job_id)
                effects += self._requeue_or_fail(job, "agent disconnected before acknowledging dispatch", now)
            elif job.cancel_reason is not None:
                del self._jobs[job_id]
                effects.append(fx.FailJob(job_id=job_id, status=JobStatus.cancelled, reason=job.cancel_reason))
            elif agent.scaler_managed:  # its container is destroyed: nothing will reconnect
                del self._jobs[job_id]
                effects.append(fx.FailJob(job_id=job_id, status=JobStatus.failed, reason=fx.REASON_SCALER_AGENT_LOST))
            else:
                deadline = now + self.config.recovery_grace
                job.phase = Phase.RECOVERING
                job.recovery_deadline = deadline
                job.agent_id = agent.agent_id
                effects.append(fx.MarkRecovering(job_id=job_id, agent_id=agent.agent_id, deadline=deadline))
        agent.jobs.clear()
        return effects

    def _expire_acks(self, now: float) -> list[fx.Effect]:
        late: dict[str, list[JobEntry]] = {}
        for job in self._jobs.values():
            if job.phase is Phase.AWAITING_ACK and job.ack_deadline is not None and job.ack_deadline <= now:
                assert job.agent_id is not None
                late.setdefault(job.agent_id, []).append(job)
        effects: list[fx.Effect] = []
        for agent_id in sorted(late):
            agent = self._agents[agent_id]
            jobs = sorted(late[agent_id], key=lambda j: j.order)
            for job in jobs:
                effects.append(fx.SendCancel(agent_id=agent_id, job_id=job.job_id, reason=fx.REASON_ACK_TIMEOUT))
            effects.append(
                fx.CloseAgent(
                    agent_id=agent_id,
                    connection_id=agent.connection_id,
                    code=fx.CLOSE_DISPATCH_ACK_TIMEOUT,
                    reason=fx.REASON_ACK_TIMEOUT,
                )
            )
            for job in jobs:
                agent.jobs.discard(job.job_id)
                effects += self._requeue_or_fail(job, fx.REASON_ACK_TIMEOUT, now)
            # The agent is forgotten at once so the requeue cannot pick it; its other jobs are
            # handled as for any disconnect.
            effects += self._disconnect(agent, now)
        return effects

    def _due(self, job: JobEntry, now: float) -> bool:
        """Whether :meth:`tick` has something to do for ``job`` at ``now`` (a recovery window or queue time
        that ran out, or a started job whose heartbeat is overdue)."""
        if job.phase is Phase.RECOVERING:
            return job.recovery_deadline is not None and job.recovery_deadline <= now
        if job.phase in (Phase.ACKED, Phase.RUNNING):
            return job.heartbeat_at is not None and now - job.heartbeat_at >= self.config.stale_after
        if job.phase is Phase.QUEUED:
            return job.expires_at is not None and job.expires_at <= now
        return False

    def _check_stale(self, job: JobEntry, now: float) -> list[fx.Effect]:
        if job.heartbeat_at is None or now - job.heartbeat_at < self.config.stale_after:
            return []
        assert job.agent_id is not None
        agent_id = job.agent_id
        if job.phase is Phase.RUNNING:
            reason = f"No heartbeat received for {int(now - job.heartbeat_at)}s"
        else:
            reason = fx.REASON_NEVER_STARTED
        self._release(job, now)
        del self._jobs[job.job_id]
        self._remember_completed(job.job_id, agent_id, now)
        return [
            fx.SendCancel(agent_id=agent_id, job_id=job.job_id, reason=fx.CANCEL_NO_HEARTBEAT),
            fx.FailJob(job_id=job.job_id, status=JobStatus.timed_out_stale, reason=reason),
        ]

    def _fill(self, now: float) -> list[fx.Effect]:
        """Assign queued jobs, oldest first, until no agent with a free slot can take any. A job with a
        free agent the auto-scaler bound to it goes there; any other job to the index's choice, in
        O(log n). A selector found without a free agent is not asked again in the same pass (nothing
        frees a slot during a fill)."""
        effects: list[fx.Effect] = []
        if not self._queue or not (self._index.free_agents or self._bound):
            return effects
        exhausted: set[routing.JobSelector] = set()
        for _, _, job_id in list(self._queue):
            if not (self._index.free_agents or self._bound):
                break
            job = self._jobs[job_id]
            selector = job.selector
            if selector is None or (job.expires_at is not None and job.expires_at <= now):
                continue
            waiting = self._bound.get(job_id, ())
            agent_id = next((a for a in waiting if selector.admits(self._agents[a].labels)), None)
            if agent_id is None:
                if selector in exhausted:
                    continue
                agent_id = self._index.best(selector)
                if agent_id is None:
                    exhausted.add(selector)
                    continue
            agent = self._agents[agent_id]
            self._dequeue(job)
            deadline = now + self.config.ack_timeout
            job.phase = Phase.AWAITING_ACK
            job.agent_id = agent_id
            job.ack_deadline = deadline
            agent.jobs.add(job_id)
            agent.idle_since = now
            agent.jobs_taken += 1
            self._sync(agent)
            effects.append(fx.MarkDispatched(job_id=job_id, agent_id=agent_id, ack_deadline=deadline))
            effects.append(fx.SendDispatch(agent_id=agent_id, job_id=job_id))
        return effects
