"""Property tests: random event sequences against the dispatcher's invariants.

Invariants checked after every step:

* a dispatch never takes an agent past its ``max_concurrency``;
* a job is only dispatched to an agent whose labels admit it;
* a job is never dispatched while it is still assigned elsewhere (no concurrent double dispatch);
* no queued job is left waiting while a connected, accepting agent with a free slot admits it (an agent
  held after a ``busy`` reject is not accepting);
* a ``job.reject`` never spends a delivery and never fails the job; after ``busy`` the job is not handed
  straight back to the agent that rejected it;
* the agent index answers every selector (exact and regex matchers, excludes, mandatory labels) exactly as a
  brute-force :func:`routing.choose_agent` over every connected agent does (least loaded, ties longest
  idle, then smallest id), holds and draining included;
* the load changes the dispatcher reports (what the cluster mirror writes), applied to what was reported
  before, give every connected agent's load as it is now.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kici_core import dispatch, routing
from kici_core import dispatch_effects as fx
from tests.support.props import examples

LABELS = ["a", "b", "c"]
AGENTS = ["w", "x", "y", "z"]
label_sets = st.frozensets(st.sampled_from(LABELS), max_size=3)
PATTERNS: list[dict[str, object]] = [
    {"kind": "regex", "source": "^a$", "flags": ""},
    {"kind": "regex", "source": "B", "flags": "i"},
    {"kind": "regex", "source": "^[bc]", "flags": ""},
]
matchers = st.lists(st.sampled_from(PATTERNS), max_size=1, unique_by=lambda m: str(m["source"]))
excludes = st.lists(
    st.sampled_from([{"kind": "exact", "value": x} for x in LABELS] + PATTERNS), max_size=1,
    unique_by=lambda m: str(m.get("value", m.get("source"))),
)  # fmt: skip
# Selectors the index is compared with after every step (plus those of the jobs queued).
PROBES = [
    routing.compile_selector([]),
    routing.compile_selector([{"kind": "exact", "value": "a"}]),
    routing.compile_selector([{"kind": "exact", "value": "a"}, {"kind": "exact", "value": "b"}]),
    routing.compile_selector([PATTERNS[1]]),
    routing.compile_selector([], [{"kind": "exact", "value": "c"}]),
    routing.compile_selector([{"kind": "exact", "value": "b"}], [PATTERNS[0]]),
]


class DispatcherMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.d = dispatch.Dispatcher()
        self.now = 0.0
        self.conn_seq = 0
        self.job_seq = 0
        self.conns: dict[str, str] = {}
        self.agent_labels: dict[str, routing.AgentLabels] = {}
        self.selectors: dict[str, routing.JobSelector] = {}
        self.runs: dict[str, str] = {}
        self.assigned: dict[str, str] = {}  # job -> agent, from effects
        self.phase: dict[str, str] = {}  # job -> awaiting | acked | recovering
        self.dispatched_to: set[str] = set()
        self.attempts: dict[str, int] = {}  # job -> deliveries spent, from Requeue effects
        self.mirrored: dict[str, dispatch.AgentLoad] = {}  # what load_changes() reported, applied

    # -------------------------------------------------------------- effect bookkeeping

    def apply(self, effects: list[fx.Effect]) -> None:
        self.dispatched_to = set()
        for e in effects:
            if isinstance(e, fx.MarkDispatched):
                assert e.job_id not in self.assigned, f"{e.job_id} dispatched while assigned"
                assert e.agent_id in self.conns, "dispatch to an unknown agent"
                assert self.selectors[e.job_id].admits(self.agent_labels[e.agent_id]), "ineligible agent"
                self.assigned[e.job_id] = e.agent_id
                self.phase[e.job_id] = "awaiting"
                self.dispatched_to.add(e.agent_id)
            elif isinstance(e, fx.AckResolved):
                assert self.assigned.get(e.job_id) == e.agent_id
                self.phase[e.job_id] = "acked"
            elif isinstance(e, fx.Requeue | fx.FailJob):
                self.assigned.pop(e.job_id, None)
                self.phase.pop(e.job_id, None)
                if isinstance(e, fx.Requeue):
                    self.attempts[e.job_id] = e.attempts
            elif isinstance(e, fx.MarkRecovering):
                assert self.assigned.get(e.job_id) == e.agent_id
                self.phase[e.job_id] = "recovering"
            elif isinstance(e, fx.Reclaim):
                assert self.phase.get(e.job_id) == "recovering"
                self.assigned[e.job_id] = e.agent_id
                self.phase[e.job_id] = "acked"
            elif isinstance(e, fx.CloseAgent):
                if self.conns.get(e.agent_id) == e.connection_id:
                    del self.conns[e.agent_id]
        for agent_id in self.dispatched_to:
            view = self.d.agent(agent_id)
            assert view is not None
            assert len(view.active_jobs) <= view.max_concurrency, "maxConcurrency exceeded"

    def live_jobs_of(self, agent_id: str) -> list[str]:
        return sorted(j for j, a in self.assigned.items() if a == agent_id and self.phase.get(j) != "recovering")

    # -------------------------------------------------------------- rules

    @rule(
        agent_id=st.sampled_from(AGENTS),
        names=label_sets,
        maxc=st.integers(1, 3),
        new_conn=st.booleans(),
        tainted=st.booleans(),
        scaler=st.sampled_from([None, None, "warm", "j1", "j2", "j3"]),
    )
    def register(
        self,
        agent_id: str,
        names: frozenset[str],
        maxc: int,
        new_conn: bool,
        tainted: bool,
        scaler: str | None,
    ) -> None:
        """``scaler``: an agent the auto-scaler started, warm (any one job) or bound to that job id."""
        if new_conn or agent_id not in self.conns:
            self.conn_seq += 1
            conn = f"{agent_id}-{self.conn_seq}"
        else:
            conn = self.conns[agent_id]
        in_flight = sorted(j for j, a in self.assigned.items() if a == agent_id)[:maxc]
        # A tainted agent takes only jobs that name its mandatory label ``a`` exactly.
        labels = routing.AgentLabels(labels=names, mandatory_labels=frozenset({"a"} if tainted else ()))
        self.agent_labels[agent_id] = labels
        effects = self.d.agent_registered(
            agent_id=agent_id, connection_id=conn, labels=labels, max_concurrency=maxc,
            in_flight_jobs=in_flight, now=self.now, scaler_managed=scaler is not None,
            bound_job_id=None if scaler in (None, "warm") else scaler,
        )  # fmt: skip
        # Superseded jobs that were not in flight move on through effects; the new connection is current.
        self.conns[agent_id] = conn
        self.apply(effects)

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def gone(self, data: st.DataObject) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.conns)))
        conn = self.conns.pop(agent_id)
        self.apply(self.d.agent_gone(agent_id=agent_id, connection_id=conn, now=self.now))

    @rule(required=label_sets, patterns=matchers, exclude=excludes, run=st.sampled_from(["r1", "r2"]))
    def queue(
        self,
        required: frozenset[str],
        patterns: list[dict[str, object]],
        exclude: list[dict[str, object]],
        run: str,
    ) -> None:
        self.job_seq += 1
        job_id = f"j{self.job_seq}"
        exact: list[dict[str, object]] = [{"kind": "exact", "value": x} for x in sorted(required)]
        selector = routing.compile_selector(exact + patterns, exclude)
        self.selectors[job_id] = selector
        self.runs[job_id] = run
        self.apply(self.d.job_queued(job_id=job_id, run_id=run, selector=selector, created_at=self.now, now=self.now))

    @precondition(lambda self: self.assigned)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["ack", "running", "success", "failed", "busy", "draining", "hb"]),
    )
    def agent_message(self, data: st.DataObject, kind: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.assigned)))
        agent_id = self.assigned[job_id]
        if kind == "ack":
            effects = self.d.job_acked(agent_id=agent_id, job_id=job_id, now=self.now)
        elif kind in ("busy", "draining"):
            before = self.attempts.get(job_id, 0)
            effects = self.d.job_rejected(agent_id=agent_id, job_id=job_id, reason=kind, now=self.now)
            assert not [
                e for e in effects if isinstance(e, fx.FailJob) and e.job_id == job_id and e.status != "cancelled"
            ], "a reject failed the job"
            requeued = [e for e in effects if isinstance(e, fx.Requeue) and e.job_id == job_id]
            assert all(e.attempts == before for e in requeued), "a reject spent a delivery"
            assert not [
                e for e in effects if isinstance(e, fx.MarkDispatched) and e.job_id == job_id and e.agent_id == agent_id
            ], "a rejected job went straight back to the same agent"
            if requeued:
                view = self.d.agent(agent_id)
                assert view is not None
                assert view.held_until is not None if kind == "busy" else not view.accepting
        elif kind == "hb":
            effects = self.d.job_heartbeat(agent_id=agent_id, job_id=job_id, now=self.now)
        else:
            live = agent_id in self.conns and self.phase.get(job_id) != "recovering"
            effects = self.d.job_status(agent_id=agent_id, job_id=job_id, state=kind, now=self.now)
            if live and kind != "running":
                # The terminal status releases the job before any refill effects in this batch.
                self.assigned.pop(job_id)
                self.phase.pop(job_id)
                effects = [e for e in effects if not isinstance(e, fx.AckResolved)]
            elif live:
                self.phase[job_id] = "acked"
        self.apply(effects)

    @rule(
        agent_id=st.sampled_from(AGENTS),
        job=st.integers(0, 30),
        state=st.sampled_from(["success", "running"]),
    )
    def stray_message(self, agent_id: str, job: int, state: str) -> None:
        job_id = f"j{job}"
        if self.assigned.get(job_id) == agent_id:
            return
        self.apply(self.d.job_status(agent_id=agent_id, job_id=job_id, state=state, now=self.now))

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), active=st.integers(0, 3))
    def agent_status(self, data: st.DataObject, active: int) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.conns)))
        self.apply(self.d.agent_status(agent_id=agent_id, active_jobs=active, now=self.now))

    @precondition(lambda self: any(self.phase.get(j) == "awaiting" for j in self.assigned))
    @rule(data=st.data())
    def busy_then_free(self, data: st.DataObject) -> None:
        """An agent rejects a dispatch as busy, then reports a free slot (the hold is lifted at once)."""
        job_id = data.draw(st.sampled_from(sorted(j for j in self.assigned if self.phase.get(j) == "awaiting")))
        agent_id = self.assigned[job_id]
        self.apply(self.d.job_rejected(agent_id=agent_id, job_id=job_id, reason="busy", now=self.now))
        self.apply(self.d.agent_status(agent_id=agent_id, active_jobs=0, now=self.now))

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def connection_heartbeat(self, data: st.DataObject) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.conns)))
        self.apply(self.d.agent_heartbeat(agent_id=agent_id, now=self.now))

    @rule(run=st.sampled_from(["r1", "r2"]))
    def cancel_run(self, run: str) -> None:
        self.apply(self.d.cancel_requested(run_id=run, reason="cancelled", now=self.now))

    @precondition(lambda self: self.selectors)
    @rule(data=st.data())
    def withdrawn(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.selectors)))
        if self.phase.get(job_id) == "awaiting":
            self.assigned.pop(job_id)
            self.phase.pop(job_id)
        self.apply(self.d.job_withdrawn(job_id=job_id, now=self.now))

    @rule(step=st.sampled_from([0.0, 1.0, 9.0, 11.0, 61.0, 125.0, 190.0]))
    def advance(self, step: float) -> None:
        self.now += step
        self.apply(self.d.tick(now=self.now))

    # -------------------------------------------------------------- invariants

    @invariant()
    def no_idle_capacity_for_waiting_jobs(self) -> None:
        if not hasattr(self, "d"):
            return
        for job_id in self.d.queued():
            for agent_id in self.d.agent_ids():
                view = self.d.agent(agent_id)
                assert view is not None
                free = (
                    view.accepting
                    and view.held_until is None
                    and len(view.active_jobs) < view.max_concurrency
                    and not (view.scaler_managed and view.jobs_taken > 0)
                    and view.bound_job_id in (None, job_id)
                )
                assert not (free and self.selectors[job_id].admits(view.labels)), (
                    f"{job_id} waits while {agent_id} could take it"
                )

    @invariant()
    def index_agrees_with_brute_force(self) -> None:
        if not hasattr(self, "d"):
            return
        views = [self.d.agent(a) for a in self.d.agent_ids()]
        candidates = [
            routing.Candidate(
                agent_id=v.agent_id,
                labels=v.labels,
                active_jobs=len(v.active_jobs),
                max_concurrency=v.max_concurrency,
                idle_since=v.idle_since,
                # An auto-scaler agent takes one job; a bound one only its job (never the index's choice).
                accepting=v.accepting
                and v.held_until is None
                and not (v.scaler_managed and (v.jobs_taken > 0 or v.bound_job_id is not None)),
            )
            for v in views
            if v is not None
        ]
        for selector in {*PROBES, *self.selectors.values()}:
            expected = routing.choose_agent(candidates, selector)
            assert self.d.best_agent(selector) == expected, f"{selector.describe()}: index disagrees"

    @invariant()
    def assignments_agree(self) -> None:
        if not hasattr(self, "d"):
            return
        for job_id, agent_id in self.assigned.items():
            assert self.d.assignment(job_id) == agent_id
        for agent_id in self.d.agent_ids():
            view = self.d.agent(agent_id)
            assert view is not None
            assert list(view.active_jobs) == self.live_jobs_of(agent_id)

    @invariant()
    def reported_load_changes_keep_a_mirror_exact(self) -> None:
        if not hasattr(self, "d"):
            return
        for agent_id, load in self.d.load_changes().items():
            if load is None:
                self.mirrored.pop(agent_id, None)
            else:
                self.mirrored[agent_id] = load
        expected = {}
        for agent_id in self.d.agent_ids():
            v = self.d.agent(agent_id)
            assert v is not None
            expected[agent_id] = dispatch.AgentLoad(v.connection_id, len(v.active_jobs), v.accepting)
        assert self.mirrored == expected


TestDispatcherMachine = DispatcherMachine.TestCase
TestDispatcherMachine.settings = settings(max_examples=examples(30), stateful_step_count=40, deadline=None)
