"""The sans-I/O dispatcher, one rule at a time."""

from __future__ import annotations

import pytest

from kici_core import dispatch, errors, routing
from kici_core import dispatch_effects as fx
from kici_core.states import JobStatus


def sel(*labels: str) -> routing.JobSelector:
    return routing.compile_selector([{"kind": "exact", "value": x} for x in labels])


def labels(*names: str, **kw) -> routing.AgentLabels:
    return routing.AgentLabels(labels=frozenset(names), **kw)


def reg(d, agent_id, *names, maxc=1, conn=None, now=0.0, in_flight=()):
    return d.agent_registered(
        agent_id=agent_id,
        connection_id=conn or f"{agent_id}-c1",
        labels=labels(*names),
        max_concurrency=maxc,
        in_flight_jobs=in_flight,
        now=now,
    )


def q(d, job_id, *names, run="r1", created=0.0, now=0.0, attempts=0, expires=None):
    return d.job_queued(
        job_id=job_id,
        run_id=run,
        selector=sel(*names),
        created_at=created,
        now=now,
        attempts=attempts,
        expires_at=expires,
    )


def view(d: dispatch.Dispatcher, agent_id: str) -> dispatch.AgentView:
    v = d.agent(agent_id)
    assert v is not None
    return v


def why(d: dispatch.Dispatcher, job_id: str) -> routing.WaitExplanation:
    w = d.why_waiting(job_id)
    assert w is not None
    return w


def sent(effects):
    return [(e.agent_id, e.job_id) for e in effects if isinstance(e, fx.SendDispatch)]


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


class TestPlacement:
    def test_claim_precedes_send_with_ack_deadline(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "linux")
        effects = q(d, "j1", "linux", now=5.0)
        assert effects == [
            fx.MarkDispatched(job_id="j1", agent_id="a", ack_deadline=15.0),
            fx.SendDispatch(agent_id="a", job_id="j1"),
        ]

    def test_ineligible_job_waits(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "linux")
        assert q(d, "j1", "gpu") == []
        assert d.queued() == ("j1",)
        assert "no connected agent has 'gpu'" in why(d, "j1").message

    def test_register_fills_every_slot_in_fifo_order(self):
        d = dispatch.Dispatcher()
        for i, created in enumerate([3.0, 1.0, 2.0, 4.0]):
            q(d, f"j{i}", "l", created=created)
        effects = reg(d, "a", "l", maxc=3)
        assert isinstance(effects[0], fx.SendRegisterAck)
        assert sent(effects) == [("a", "j1"), ("a", "j2"), ("a", "j0")]
        assert d.queued() == ("j3",)
        assert why(d, "j3").eligible == ("a",)

    def test_never_exceeds_max_concurrency(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2)
        for i in range(5):
            q(d, f"j{i}", "l", created=float(i))
        assert view(d, "a").active_jobs == ("j0", "j1")

    def test_least_loaded_then_longest_idle(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2, now=0.0)
        reg(d, "b", "l", maxc=2, now=1.0)
        assert sent(q(d, "j1", "l", now=2.0)) == [("a", "j1")]  # tie on load; a idle longer
        assert sent(q(d, "j2", "l", now=3.0)) == [("b", "j2")]  # a is busier
        assert sent(q(d, "j3", "l", now=4.0)) == [("a", "j3")]  # tie; a idle since 2, b since 3

    def test_known_job_is_never_queued_twice(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2)
        q(d, "j1", "l")
        assert q(d, "j1", "l") == []
        assert view(d, "a").active_jobs == ("j1",)

    def test_terminal_status_frees_slot_and_refills(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        q(d, "j2", "l", created=1.0)
        d.job_acked(agent_id="a", job_id="j1", now=1.0)
        effects = d.job_status(agent_id="a", job_id="j1", state="success", now=2.0)
        assert sent(effects) == [("a", "j2")]
        # A replayed terminal message does not free a second slot.
        assert d.job_status(agent_id="a", job_id="j1", state="success", now=3.0) == []
        assert view(d, "a").active_jobs == ("j2",)
        assert d.owns("a", "j1", now=20.0)
        assert not d.owns("a", "j1", now=40.0)

    def test_claim_lost_to_another_process(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        q(d, "j2", "l", created=1.0)
        effects = d.job_withdrawn(job_id="j1", now=1.0)
        assert sent(effects) == [("a", "j2")]
        assert d.assignment("j1") is None
        assert d.job_withdrawn(job_id="j2", now=2.0) == []  # unchanged: still awaiting ack

    def test_queue_expiry(self):
        d = dispatch.Dispatcher()
        q(d, "j1", "gpu", expires=100.0)
        assert d.next_deadline() == 100.0
        effects = d.tick(now=100.0)
        assert effects == [fx.FailJob(job_id="j1", status=JobStatus.timed_out_stale, reason=fx.REASON_QUEUE_EXPIRED)]
        assert d.queued() == ()

    def test_bad_capacity(self):
        with pytest.raises(errors.InvalidInput):
            reg(dispatch.Dispatcher(), "a", maxc=0)


class TestAckDeadline:
    def test_ack_resolves(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        assert d.job_acked(agent_id="a", job_id="j1", now=1.0) == [fx.AckResolved(job_id="j1", agent_id="a")]
        assert d.job_acked(agent_id="a", job_id="j1", now=1.0) == []
        assert d.tick(now=50.0) == []

    def test_ack_from_another_agent_is_ignored(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        reg(d, "b", "x")
        q(d, "j1", "l")
        assert d.job_acked(agent_id="b", job_id="j1", now=1.0) == []

    def test_running_resolves_the_ack(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        assert d.job_status(agent_id="a", job_id="j1", state="running", now=1.0) == [
            fx.AckResolved(job_id="j1", agent_id="a")
        ]

    def test_expiry_cancels_closes_forgets_and_requeues(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2, now=0.0)
        reg(d, "b", "l", now=0.0)
        q(d, "j1", "l", now=0.0)  # -> a (tie, a < b)
        q(d, "j2", "l", now=1.0)  # -> b (a busier)
        d.job_acked(agent_id="b", job_id="j2", now=2.0)
        reg(d, "c", "l", now=3.0)
        effects = d.tick(now=10.0)
        assert effects[:3] == [
            fx.SendCancel(agent_id="a", job_id="j1", reason="dispatch ack timeout"),
            fx.CloseAgent(agent_id="a", connection_id="a-c1", code=4031, reason="dispatch ack timeout"),
            fx.Requeue(job_id="j1", attempts=1, context="dispatch ack timeout"),
        ]
        assert sent(effects) == [("c", "j1")]
        assert d.agent("a") is None
        # The closed connection's later close event changes nothing.
        assert d.agent_gone(agent_id="a", connection_id="a-c1", now=11.0) == []

    def test_attempt_budget(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l", attempts=4)
        effects = d.tick(now=10.0)
        assert of(effects, fx.FailJob) == [
            fx.FailJob(
                job_id="j1",
                status=JobStatus.failed,
                reason="Job failed: re-dispatch attempts exhausted after 5 attempts (dispatch ack timeout)",
            )
        ]
        assert d.agent("a") is None and not d.tracks("j1")

    def test_five_deliveries_at_most(self):
        d = dispatch.Dispatcher()
        q(d, "j1", "l")
        deliveries = 0
        now = 0.0
        for n in range(10):
            effects = reg(d, f"a{n}", "l", now=now)
            deliveries += len(sent(effects))
            now += 11.0
            effects = d.tick(now=now)
            if of(effects, fx.FailJob):
                break
        assert deliveries == 5
        assert of(effects, fx.FailJob)[0].reason.endswith("after 5 attempts (dispatch ack timeout)")


class TestReject:
    """A ``job.reject`` is "not now": no delivery is spent, and a ``busy`` agent is left alone until it reports a
    free slot (or its backoff passes)."""

    def test_agent_busy_while_it_tidies_up_gets_the_next_job_once_it_reports_a_free_slot(self):
        # The agent reports j1 finished, is handed j2 at once, and rejects it: it is still removing j1's
        # work directory. j2 must not bounce back to it, and no delivery is spent.
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        q(d, "j2", "l", created=1.0)
        d.job_status(agent_id="a", job_id="j1", state="running", now=1.0)
        assert sent(d.job_status(agent_id="a", job_id="j1", state="success", now=2.0)) == [("a", "j2")]
        effects = d.job_rejected(agent_id="a", job_id="j2", reason="busy", now=2.1)
        assert effects == [fx.Requeue(job_id="j2", attempts=0, context="agent rejected dispatch (busy)")]
        assert view(d, "a").held_until == 4.1
        assert d.queued() == ("j2",)
        assert why(d, "j2").held == ("a",)
        assert why(d, "j2").message == (
            "all eligible agents are busy: a (a rejected a dispatch as busy; no job goes there until it reports a "
            "free slot)"
        )
        # The status that follows the reject still counts the old job: nothing changes.
        assert d.agent_status(agent_id="a", active_jobs=1, now=2.2) == []
        # Cleanup done, the agent says it is free: j2 goes there, as a first delivery still.
        effects = d.agent_status(agent_id="a", active_jobs=0, now=2.5)
        assert sent(effects) == [("a", "j2")]
        assert view(d, "a").held_until is None

    def test_busy_never_spends_the_delivery_budget(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l", attempts=4)
        now = 0.0
        for _ in range(20):
            now += 1.0
            effects = d.job_rejected(agent_id="a", job_id="j1", reason="busy", now=now)
            assert of(effects, fx.FailJob) == []
            assert of(effects, fx.Requeue) == [
                fx.Requeue(job_id="j1", attempts=4, context="agent rejected dispatch (busy)")
            ]
            now += 60.0  # past any backoff
            d.agent_heartbeat(agent_id="a", now=now)
            assert sent(d.tick(now=now)) == [("a", "j1")]
        d.job_acked(agent_id="a", job_id="j1", now=now)
        assert d.assignment("j1") == "a"

    def test_rejected_job_goes_to_another_free_agent_not_back(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2, now=0.0)
        q(d, "j1", "l", now=1.0)
        reg(d, "b", "l", now=2.0)
        effects = d.job_rejected(agent_id="a", job_id="j1", reason="busy", now=3.0)
        assert sent(effects) == [("b", "j1")]
        # a keeps its two free slots in the count, but is held: new work goes elsewhere or waits.
        assert q(d, "j2", "l", now=3.5) == []
        assert why(d, "j2").held == ("a",)

    def test_terminal_status_or_register_lifts_the_hold(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2)
        q(d, "j1", "l")
        q(d, "j2", "l", created=1.0)
        d.job_acked(agent_id="a", job_id="j1", now=1.0)
        d.job_rejected(agent_id="a", job_id="j2", reason="busy", now=1.0)
        assert d.queued() == ("j2",)
        assert sent(d.job_status(agent_id="a", job_id="j1", state="success", now=1.5)) == [("a", "j2")]
        d.job_rejected(agent_id="a", job_id="j2", reason="busy", now=1.6)
        assert d.queued() == ("j2",)
        assert sent(reg(d, "a", "l", maxc=2, now=1.7)) == [("a", "j2")]  # refresh on the same connection

    def test_hold_expires_with_a_backoff_that_doubles_and_resets_on_accept(self):
        d = dispatch.Dispatcher(config=fx.DispatcherConfig(busy_backoff=2.0, busy_backoff_max=5.0))
        reg(d, "a", "l")
        q(d, "j1", "l")
        holds = []
        now = 0.0
        for _ in range(3):
            d.job_rejected(agent_id="a", job_id="j1", reason="busy", now=now)
            until = view(d, "a").held_until
            assert until is not None and d.next_deadline() == until
            holds.append(until - now)
            assert sent(d.tick(now=until - 0.01)) == []
            now = until
            assert sent(d.tick(now=now)) == [("a", "j1")]
        assert holds == [2.0, 4.0, 5.0]
        d.job_acked(agent_id="a", job_id="j1", now=now)
        q(d, "j2", "l", now=now)
        d.job_status(agent_id="a", job_id="j1", state="success", now=now)
        d.job_rejected(agent_id="a", job_id="j2", reason="busy", now=now)
        assert view(d, "a").held_until == now + 2.0

    def test_an_agent_that_keeps_contradicting_itself_waits_out_the_timer(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        now = 0.0
        for _ in range(2):
            d.job_rejected(agent_id="a", job_id="j1", reason="busy", now=now)
            assert sent(d.agent_status(agent_id="a", active_jobs=0, now=now)) == [("a", "j1")]
        d.job_rejected(agent_id="a", job_id="j1", reason="busy", now=now)
        assert d.agent_status(agent_id="a", active_jobs=0, now=now) == []  # the third in a row: timer only
        assert sent(d.tick(now=now + 8.0)) == [("a", "j1")]

    def test_draining_stops_dispatch_without_spending_the_budget(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2)
        q(d, "j1", "l", attempts=4)
        effects = d.job_rejected(agent_id="a", job_id="j1", reason="draining", now=2.0)
        assert effects == [fx.Requeue(job_id="j1", attempts=4, context="agent rejected dispatch (draining)")]
        assert d.queued() == ("j1",)
        assert view(d, "a").accepting is False
        assert d.agent_status(agent_id="a", active_jobs=0, now=2.5) == []
        assert sent(reg(d, "a", "l", maxc=2, now=3.0)) == [("a", "j1")]  # re-register resumes

    def test_status_of_an_unknown_agent_is_ignored(self):
        d = dispatch.Dispatcher()
        q(d, "j1", "l")
        assert d.agent_status(agent_id="ghost", active_jobs=0, now=1.0) == []


class TestDisconnectAndReclaim:
    def setup_dispatcher(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2)
        q(d, "started", "l")
        q(d, "unacked", "l", created=1.0)
        d.job_status(agent_id="a", job_id="started", state="running", now=1.0)
        return d

    def test_gone_requeues_unacked_and_recovers_started(self):
        d = self.setup_dispatcher()
        effects = d.agent_gone(agent_id="a", connection_id="a-c1", now=5.0)
        assert effects == [
            fx.MarkRecovering(job_id="started", agent_id="a", deadline=125.0),
            fx.Requeue(job_id="unacked", attempts=1, context="agent disconnected before acknowledging dispatch"),
        ]
        assert d.owns("a", "started", now=6.0)

    def test_reclaim_on_reconnect_precedes_register_ack(self):
        d = self.setup_dispatcher()
        d.agent_gone(agent_id="a", connection_id="a-c1", now=5.0)
        effects = reg(d, "a", "l", maxc=2, conn="a-c2", now=30.0, in_flight=["started", "mystery"])
        assert effects == [
            fx.Reclaim(job_id="started", agent_id="a"),
            fx.SendCancel(agent_id="a", job_id="mystery", reason=fx.REASON_NOT_ASSIGNED),
            fx.SendRegisterAck(agent_id="a", connection_id="a-c2"),
            fx.MarkDispatched(job_id="unacked", agent_id="a", ack_deadline=40.0),
            fx.SendDispatch(agent_id="a", job_id="unacked"),
        ]
        assert view(d, "a").active_jobs == ("started", "unacked")
        assert d.tick(now=200.0)[0] == fx.SendCancel(agent_id="a", job_id="unacked", reason="dispatch ack timeout")

    def test_recovery_window_expires(self):
        d = self.setup_dispatcher()
        d.agent_gone(agent_id="a", connection_id="a-c1", now=5.0)
        assert d.tick(now=124.0) == []
        assert d.tick(now=125.0) == [
            fx.FailJob(job_id="started", status=JobStatus.failed, reason=fx.REASON_RECOVERY_EXPIRED)
        ]
        effects = reg(d, "a", "l", conn="a-c2", now=130.0, in_flight=["started"])
        assert effects[0] == fx.SendCancel(agent_id="a", job_id="started", reason=fx.REASON_NOT_ASSIGNED)

    def test_reclaim_after_restart_from_durable_rows(self):
        d = dispatch.Dispatcher()
        d.job_recovering(job_id="j9", run_id="r", agent_id="a", deadline=120.0)
        effects = reg(d, "a", "l", now=10.0, in_flight=["j9"])
        assert effects[0] == fx.Reclaim(job_id="j9", agent_id="a")
        assert view(d, "a").active_jobs == ("j9",)

    def test_duplicate_agent_id_supersedes_and_carries_jobs(self):
        d = self.setup_dispatcher()
        effects = reg(d, "a", "l", maxc=2, conn="a-c2", now=6.0, in_flight=["started", "unacked"])
        assert effects[0] == fx.CloseAgent(
            agent_id="a",
            connection_id="a-c1",
            code=4003,
            reason="Superseded by a newer connection for this agentId",
        )
        assert fx.AckResolved(job_id="unacked", agent_id="a") in effects
        assert not of(effects, fx.MarkRecovering) and not of(effects, fx.Requeue)
        assert view(d, "a").active_jobs == ("started", "unacked")
        assert view(d, "a").connection_id == "a-c2"
        # The old socket's close is not the current connection: nothing happens.
        assert d.agent_gone(agent_id="a", connection_id="a-c1", now=7.0) == []
        assert d.agent("a") is not None

    def test_supersede_without_in_flight_handles_jobs_as_lost(self):
        d = self.setup_dispatcher()
        effects = reg(d, "a", "l", maxc=2, conn="a-c2", now=6.0)
        assert fx.MarkRecovering(job_id="started", agent_id="a", deadline=126.0) in effects
        assert sent(effects) == [("a", "unacked")]

    def test_in_place_re_register_keeps_count_and_updates_labels(self):
        d = self.setup_dispatcher()
        effects = reg(d, "a", "l", "gpu", maxc=3, now=6.0, in_flight=["started"])
        assert not of(effects, fx.CloseAgent)
        view = d.agent("a")
        assert view.active_jobs == ("started", "unacked")
        assert view.max_concurrency == 3
        assert "gpu" in view.labels.effective

    def test_connection_heartbeat_timeout(self):
        d = self.setup_dispatcher()
        d.agent_heartbeat(agent_id="a", now=100.0)
        d.job_heartbeat(agent_id="a", job_id="started", now=100.0)
        d.job_acked(agent_id="a", job_id="unacked", now=1.0)
        d.job_status(agent_id="a", job_id="unacked", state="running", now=100.0)
        assert d.tick(now=200.0) == []
        effects = d.tick(now=280.5)
        assert effects[0] == fx.CloseAgent(agent_id="a", connection_id="a-c1", code=4004, reason="Heartbeat timeout")
        assert of(effects, fx.MarkRecovering)


class TestStale:
    def test_running_job_without_heartbeat_is_cancelled_and_slot_freed(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        q(d, "j2", "l", created=1.0)
        d.job_status(agent_id="a", job_id="j1", state="running", now=0.0)
        d.job_heartbeat(agent_id="a", job_id="j1", now=60.0)
        d.agent_heartbeat(agent_id="a", now=170.0)
        assert d.tick(now=179.0) == []
        effects = d.tick(now=180.0)
        assert effects[:2] == [
            fx.SendCancel(agent_id="a", job_id="j1", reason="No heartbeat received"),
            fx.FailJob(job_id="j1", status=JobStatus.timed_out_stale, reason="No heartbeat received for 120s"),
        ]
        assert sent(effects) == [("a", "j2")]
        assert d.agent("a") is not None  # the agent stays registered

    def test_acked_but_never_started(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        d.job_acked(agent_id="a", job_id="j1", now=0.0)
        effects = d.tick(now=120.0)
        assert fx.FailJob(job_id="j1", status=JobStatus.timed_out_stale, reason=fx.REASON_NEVER_STARTED) in effects


class TestCancel:
    def test_run_cancel(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l", maxc=2)
        q(d, "running", "l", run="r1")
        q(d, "unacked", "l", run="r1", created=1.0)
        q(d, "queued", "gpu", run="r1", created=2.0)
        q(d, "other", "l", run="r2", created=3.0)
        d.job_status(agent_id="a", job_id="running", state="running", now=1.0)
        effects = d.cancel_requested(run_id="r1", reason="run cancelled via API", now=2.0)
        cancelled = fx.FailJob(job_id="unacked", status=JobStatus.cancelled, reason="run cancelled via API")
        assert effects[:4] == [
            fx.SendCancel(agent_id="a", job_id="running", reason="run cancelled via API"),
            fx.SendCancel(agent_id="a", job_id="unacked", reason="run cancelled via API"),
            cancelled,
            fx.FailJob(job_id="queued", status=JobStatus.cancelled, reason="run cancelled via API"),
        ]
        assert sent(effects) == [("a", "other")]  # the freed slot goes to another run's job
        # The started job keeps its slot until the agent reports.
        assert view(d, "a").active_jobs == ("other", "running")
        d.job_status(agent_id="a", job_id="running", state="cancelled", now=3.0)
        assert view(d, "a").active_jobs == ("other",)

    def test_cancelled_job_is_not_requeued_when_agent_drops(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "l")
        q(d, "j1", "l")
        d.job_status(agent_id="a", job_id="j1", state="running", now=1.0)
        d.cancel_requested(job_id="j1", reason="stop", force=True, now=2.0)
        effects = d.agent_gone(agent_id="a", connection_id="a-c1", now=3.0)
        assert effects == [fx.FailJob(job_id="j1", status=JobStatus.cancelled, reason="stop")]

    def test_cancel_recovering_and_arguments(self):
        d = dispatch.Dispatcher()
        d.job_recovering(job_id="j1", run_id="r", agent_id="a", deadline=100.0)
        assert d.cancel_requested(job_id="j1", reason="x", now=1.0) == [
            fx.FailJob(job_id="j1", status=JobStatus.cancelled, reason="x")
        ]
        with pytest.raises(errors.InvalidInput):
            d.cancel_requested(reason="x", now=1.0)


def test_config_validation():
    with pytest.raises(errors.ConfigError):
        fx.DispatcherConfig(ack_timeout=0.5)
    with pytest.raises(errors.ConfigError):
        fx.DispatcherConfig(max_attempts=0)


def test_next_deadline():
    d = dispatch.Dispatcher()
    assert d.next_deadline() is None
    reg(d, "a", "l", now=0.0)
    q(d, "j1", "l", now=2.0)
    assert d.next_deadline() == 12.0


class TestLoadChanges:
    """What the cluster mirror reads: the agents whose load changed, not every agent."""

    def test_registration_dispatch_completion_and_disconnect_are_reported_once(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "linux")
        reg(d, "b", "gpu")
        assert d.load_changes() == {"a": dispatch.AgentLoad("a-c1", 0, True), "b": dispatch.AgentLoad("b-c1", 0, True)}
        assert d.load_changes() == {}
        q(d, "j1", "linux", now=1.0)
        assert d.load_changes() == {"a": dispatch.AgentLoad("a-c1", 1, True)}
        d.job_acked(agent_id="a", job_id="j1", now=2.0)
        d.agent_heartbeat(agent_id="b", now=2.0)
        assert d.load_changes() == {}  # neither changes a load
        d.job_status(agent_id="a", job_id="j1", state="success", now=3.0)
        assert d.load_changes() == {"a": dispatch.AgentLoad("a-c1", 0, True)}
        d.agent_gone(agent_id="b", connection_id="b-c1", now=4.0)
        assert d.load_changes() == {"b": None}

    def test_a_draining_reject_and_a_new_connection_are_changes(self):
        d = dispatch.Dispatcher()
        reg(d, "a", "linux")
        q(d, "j1", "linux", now=1.0)
        d.load_changes()
        d.job_rejected(agent_id="a", job_id="j1", reason="draining", now=2.0)
        assert d.load_changes() == {"a": dispatch.AgentLoad("a-c1", 0, False)}
        reg(d, "a", "linux", conn="a-c2", now=3.0)
        assert d.load_changes() == {"a": dispatch.AgentLoad("a-c2", 1, True)}  # takes j1 again at once

    def test_everything_adds_every_connected_agent(self):
        d = dispatch.Dispatcher()
        for name in ("a", "b", "c"):
            reg(d, name, "linux")
        d.agent_gone(agent_id="c", connection_id="c-c1", now=1.0)
        d.load_changes()
        reg(d, "d", "linux")
        assert d.load_changes(everything=True) == {
            "d": dispatch.AgentLoad("d-c1", 0, True),
            "a": dispatch.AgentLoad("a-c1", 0, True),
            "b": dispatch.AgentLoad("b-c1", 0, True),
        }
