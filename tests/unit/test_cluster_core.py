"""The cluster's pure rules: instance liveness, the ``/cluster/health`` body, retention cutoffs, and "why is my
job waiting" over a fake directory of agents on several processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kici_core import cluster, retention, routing
from kici_core.cluster import ClusterAgent, DutyInfo, InstanceInfo
from kici_core.testing import fakes

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(seconds=30)


def inst(name: str, age_s: float, **kw: object) -> InstanceInfo:
    return InstanceInfo(
        instance_id=name,
        hostname="h",
        pid=1,
        version="0.1.0",
        mode="independent",
        started_at=NOW - timedelta(hours=1),
        heartbeat_at=NOW - timedelta(seconds=age_s),
        **kw,
    )  # type: ignore[arg-type]


def test_liveness_follows_the_heartbeat_and_a_clean_stop() -> None:
    assert cluster.instance_state(inst("a", 5), now=NOW, timeout=TIMEOUT) == "alive"
    assert cluster.instance_state(inst("a", 31), now=NOW, timeout=TIMEOUT) == "dead"
    assert cluster.instance_state(inst("a", 1, stopped_at=NOW), now=NOW, timeout=TIMEOUT) == "stopped"


def test_health_names_every_instance_heartbeat_and_duty_holder() -> None:
    agents = [
        ClusterAgent(agent_id="x", instance_id="b", labels=("linux",)),
        ClusterAgent(agent_id="y", instance_id="b", labels=("linux",)),
    ]
    body = cluster.health(
        me="a",
        instances=[inst("b", 3), inst("a", 1), inst("c", 120)],
        duties=[DutyInfo(duty="retention", instance_id="b", last_run_at=NOW)],
        agents=agents,
        active_runs=4,
        now=NOW,
        timeout=TIMEOUT,
        known_duties=("dispatch-sweeps", "retention"),
    )
    assert body["status"] == "degraded"  # c died and nobody recovered its work yet
    assert (body["instanceId"], body["peerCount"], body["connectedPeers"], body["agentCount"], body["activeRuns"]) == (
        "a",
        2,
        1,
        2,
        4,
    )
    rows = {i["instanceId"]: i for i in body["instances"]}  # type: ignore[index,union-attr]
    assert rows["b"]["agents"] == 2 and rows["b"]["lastHeartbeatAt"] == "2026-05-01T11:59:57Z"
    assert rows["a"]["self"] is True and rows["c"]["state"] == "dead" and rows["c"]["heartbeatAgeSeconds"] == 120.0
    assert body["duties"] == [
        {"duty": "dispatch-sweeps", "instanceId": None, "lastRunAt": None},
        {"duty": "retention", "instanceId": "b", "lastRunAt": "2026-05-01T12:00:00Z"},
    ]
    recovered = cluster.health(
        me="a",
        instances=[inst("a", 1), inst("c", 120, recovered_at=NOW, recovered_by="a")],
        duties=[],
        agents=[],
        active_runs=0,
        now=NOW,
        timeout=TIMEOUT,
    )
    assert recovered["status"] == "healthy"


@pytest.mark.anyio
async def test_why_waiting_uses_agents_on_every_process() -> None:
    directory = fakes.FakeClusterDirectory()
    directory.agent_list = [
        ClusterAgent(agent_id="here", instance_id="a", labels=("linux",), active_jobs=1),
        ClusterAgent(
            agent_id="there",
            instance_id="b",
            labels=("linux", "gpu"),
            platform="linux",
            arch="arm64",
            max_concurrency=2,
            active_jobs=2,
        ),
        ClusterAgent(agent_id="tainted", instance_id="c", labels=("linux", "secure"), mandatory_labels=("secure",)),
    ]
    gpu = routing.compile_selector([{"kind": "exact", "value": "gpu"}], [])
    assert (await cluster.why_waiting(directory, gpu)).message == "all eligible agents are busy: there"
    arm = routing.compile_selector([{"kind": "exact", "value": "kici:arch:arm64"}], [])
    assert (await cluster.why_waiting(directory, arm)).eligible == ("there",)
    secure = routing.compile_selector([{"kind": "exact", "value": "linux"}], [{"kind": "exact", "value": "gpu"}])
    assert (await cluster.why_waiting(directory, secure)).tainted == ("tainted",)
    directory.agent_list = []
    assert (await cluster.why_waiting(directory, gpu)).message == "no agent is connected"


def test_retention_cutoffs_per_kind_and_zero_keeps_forever() -> None:
    policy = retention.RetentionPolicy(payload_days=30, log_days=7, run_days=90, event_log_days=0)
    cut = retention.cutoffs(policy, NOW)
    assert (cut.payloads, cut.logs, cut.runs, cut.event_log) == (
        NOW - timedelta(days=30),
        NOW - timedelta(days=7),
        NOW - timedelta(days=90),
        None,
    )
    with pytest.raises(ValueError):
        retention.RetentionPolicy(run_days=-1)
    with pytest.raises(ValueError):
        retention.cutoffs(policy, datetime(2026, 1, 1))


def test_every_advisory_lock_key_is_used_by_one_duty_only() -> None:
    from kici_adapters.postgres import scaler, singletons
    from kici_runtime.orchestrator import scheduler

    keys = list(singletons.LOCKS.values())
    assert len(keys) == len(set(keys)), singletons.LOCKS
    assert scaler.SCALER_LOCK == singletons.lock_key("scaler")
    assert scheduler.SCHEDULER_LOCK == singletons.lock_key("schedules")
    assert set(singletons.DUTIES) <= set(singletons.LOCKS)
