"""The auto-scaler's pure decisions: which jobs get containers, caps, warm pools, removals; nft rules; and the
dispatcher's one-job-per-scaler-agent rule."""

from __future__ import annotations

import pytest

from kici_core import dispatch_effects as fx
from kici_core import netrules, routing, scaling
from kici_core.dispatch import Dispatcher

IMAGE = "registry.example/kici-agent:1"


def label_set(*labels: str, **kw: object) -> scaling.LabelSet:
    return scaling.LabelSet(labels=labels, image=IMAGE, **kw)  # type: ignore[arg-type]


def scaler(
    name: str, *sets: scaling.LabelSet, max_agents: int = 4, warm: int = 0, idle: float = 300.0
) -> scaling.ScalerSpec:
    return scaling.ScalerSpec(
        name=name, max_agents=max_agents, label_sets=sets, warm_pool=scaling.WarmPool(size=warm, idle_timeout=idle)
    )


def job(job_id: str, *labels: str, at: float = 0.0) -> scaling.PendingJob:
    selector = routing.compile_selector([{"kind": "exact", "value": v} for v in labels], [])
    return scaling.PendingJob(job_id=job_id, run_id="run-1", selector=selector, created_at=at)


def container(
    agent_id: str,
    phase: scaling.Phase,
    *,
    bound: str | None = None,
    scaler_name: str = "docker",
    at: float = 0.0,
    index: int = 0,
) -> scaling.Container:
    return scaling.Container(
        agent_id=agent_id, scaler=scaler_name, label_set=index, bound_job_id=bound, phase=phase, created_at=at
    )


CONFIG = scaling.ScalerConfig(
    global_max_agents=50,
    scalers=(scaler("docker", label_set("linux", "docker"), label_set("linux", "gpu"), max_agents=2),),
)


def plan(
    config: scaling.ScalerConfig = CONFIG,
    *,
    now: float = 100.0,
    jobs: list[scaling.PendingJob] | None = None,
    agents: list[scaling.StaticAgent] | None = None,
    containers: list[scaling.Container] | None = None,
    last_demand: dict[str, float] | None = None,
    blocked: dict[str, str] | None = None,
) -> scaling.Plan:
    return scaling.plan(
        config,
        now=now,
        jobs=jobs or [],
        agents=agents or [],
        containers=containers or [],
        last_demand=last_demand or {},
        blocked=blocked,
    )


def test_a_job_no_agent_takes_gets_a_container_of_the_first_matching_label_set() -> None:
    result = plan(jobs=[job("j1", "gpu")])
    assert result.spawn == (scaling.Spawn(scaler="docker", label_set=1, job_id="j1", run_id="run-1"),)
    assert result.waiting == {}
    assert result.demand == {"docker"}


def test_jobs_for_labels_no_scaler_provides_are_left_alone() -> None:
    result = plan(jobs=[job("j1", "windows")])
    assert result.spawn == () and result.waiting == {} and result.demand == frozenset()


def test_a_free_slot_of_a_connected_agent_is_used_first() -> None:
    static = scaling.StaticAgent(labels=routing.AgentLabels(labels=frozenset({"linux", "docker"})), free_slots=1)
    result = plan(jobs=[job("j1", "docker", at=1), job("j2", "docker", at=2)], agents=[static])
    assert [s.job_id for s in result.spawn] == ["j2"]  # j1 (oldest) takes the agent's slot


def test_max_agents_caps_a_scaler_and_the_waiting_job_says_so() -> None:
    result = plan(jobs=[job(f"j{i}", "docker", at=i) for i in range(3)], containers=[container("c0", "busy")])
    assert [s.job_id for s in result.spawn] == ["j0"]
    assert result.waiting == {
        "j1": "scaler docker at capacity (2/2 agents)",
        "j2": "scaler docker at capacity (2/2 agents)",
    }


def test_global_max_agents_caps_all_scalers_together() -> None:
    config = scaling.ScalerConfig(
        global_max_agents=2, scalers=(scaler("a", label_set("x")), scaler("b", label_set("y")))
    )
    result = plan(config, jobs=[job("j1", "x", at=1), job("j2", "y", at=2), job("j3", "y", at=3)])
    assert [s.job_id for s in result.spawn] == ["j1", "j2"]
    assert result.waiting == {"j3": "scalers at global capacity (2/2 agents)"}


def test_a_job_with_a_live_container_gets_no_second_one() -> None:
    result = plan(jobs=[job("j1", "docker")], containers=[container("c1", "starting", bound="j1", at=99)])
    assert result.spawn == () and result.remove == ()


def test_a_job_whose_spawn_failed_waits_with_that_reason() -> None:
    result = plan(jobs=[job("j1", "docker")], blocked={"j1": "image x missing (retrying within 30 s)"})
    assert result.spawn == ()
    assert result.waiting == {"j1": "image x missing (retrying within 30 s)"}


def test_removals_disconnected_exited_stuck_and_orphaned_bindings() -> None:
    result = plan(
        now=500.0,
        jobs=[job("j-live", "docker")],
        containers=[
            container("gone", "disconnected", bound="j-old"),
            container("dead", "exited", bound="j-old2"),
            container("stuck", "starting", bound="j-live", at=100.0),
            container("stale", "idle", bound="j-taken", at=490.0),
            container("working", "busy", bound="j-running", at=490.0),
        ],
    )
    assert {r.agent_id: r.reason for r in result.remove} == {
        "gone": "agent disconnected",
        "dead": "container exited",
        "stuck": "agent did not connect within 120 s",
        "stale": "its job was taken by another agent or ended",
    }
    # the stuck container's job gets a new one in the same pass (its slot is free again)
    assert [s.job_id for s in result.spawn] == ["j-live"]


def test_containers_of_a_scaler_no_longer_configured_are_removed() -> None:
    result = plan(containers=[container("old", "idle", scaler_name="gone")])
    assert result.remove == (scaling.Remove(agent_id="old", reason="gone.labelSets[0] is no longer configured"),)


def test_warm_pool_fills_to_size_within_caps_and_serves_jobs() -> None:
    config = scaling.ScalerConfig(scalers=(scaler("w", label_set("a"), label_set("b"), max_agents=3, warm=2),))
    first = plan(config, now=10.0, last_demand={"w": 0.0})
    assert first.spawn == (scaling.Spawn(scaler="w", label_set=0), scaling.Spawn(scaler="w", label_set=1))
    ready = [container("w1", "idle", scaler_name="w"), container("w2", "idle", scaler_name="w", index=1)]
    served = plan(config, now=20.0, jobs=[job("j1", "b")], containers=ready, last_demand={"w": 0.0})
    # j1 goes to the ready b container; the pool refills to two unbound ones
    assert served.demand == {"w"}
    assert served.spawn == (scaling.Spawn(scaler="w", label_set=1),)


def test_warm_pool_empties_after_idle_timeout_and_refills_on_demand() -> None:
    config = scaling.ScalerConfig(scalers=(scaler("w", label_set("a"), warm=1, idle=60.0),))
    idle = [container("w1", "idle", scaler_name="w")]
    assert plan(config, now=59.0, containers=idle, last_demand={"w": 0.0}).remove == ()
    expired = plan(config, now=61.0, containers=idle, last_demand={"w": 0.0})
    assert expired.remove == (scaling.Remove(agent_id="w1", reason="warm pool idle timeout"),)
    assert plan(config, now=61.0, last_demand={"w": 0.0}).spawn == ()
    demand = plan(config, now=200.0, jobs=[job("j1", "a")], last_demand={"w": 0.0})
    assert demand.spawn == (
        scaling.Spawn(scaler="w", label_set=0, job_id="j1", run_id="run-1"),
        scaling.Spawn(scaler="w", label_set=0),
    )


def test_label_set_overlaps_are_named() -> None:
    config = scaling.ScalerConfig(scalers=(scaler("a", label_set("x", "y")), scaler("b", label_set("y", "x"))))
    assert scaling.label_set_overlaps(config) == ["a.labelSets[0] and b.labelSets[0] both provide [x, y]"]
    assert scaling.label_set_overlaps(CONFIG) == []


# ------------------------------------------------------------------------------------------------ nft rules
def test_container_rules_in_placement_order() -> None:
    rules = netrules.container_rules("172.30.0.5", allowlist=["10.0.5.0/24", "10.0.9.9"], deny_all=True)
    assert [" ".join(r) for r in rules] == [
        "insert rule ip kici forward ip saddr 172.30.0.5 ip daddr 172.30.0.1 accept",
        "insert rule ip kici forward ip saddr 172.30.0.5 ip daddr 10.0.5.0/24 accept",
        "insert rule ip kici forward ip saddr 172.30.0.5 ip daddr 10.0.9.9 accept",
        "add rule ip kici forward ip saddr 172.30.0.5 ip daddr 10.0.0.0/8 drop",
        "add rule ip kici forward ip saddr 172.30.0.5 ip daddr 172.16.0.0/12 drop",
        "add rule ip kici forward ip saddr 172.30.0.5 ip daddr 192.168.0.0/16 drop",
        "add rule ip kici forward ip saddr 172.30.0.5 ip daddr 169.254.0.0/16 drop",
        "add rule ip kici forward ip saddr 172.30.0.5 drop",
    ]


@pytest.mark.parametrize("bad", ["172.30.0.5; flush ruleset", "not-an-ip", "10.0.0.0/33"])
def test_rule_arguments_must_be_addresses(bad: str) -> None:
    with pytest.raises(Exception, match="not an IPv4"):
        netrules.container_rules("172.30.0.5", allowlist=[bad])
    with pytest.raises(Exception, match="not an IPv4"):
        netrules.container_rules(bad)


def test_removal_matches_the_address_as_a_whole_token_highest_handle_first() -> None:
    listing = "\n".join(
        [
            "table ip kici {",
            "\tchain forward { # handle 1",
            "\t\ttype filter hook forward priority filter; policy accept;",
            "\t\tip saddr 10.0.0.20 ip daddr 172.30.0.1 accept # handle 7",
            "\t\tip saddr 10.0.0.2 ip daddr 172.30.0.1 accept # handle 4",
            "\t\tip saddr 10.0.0.2 ip daddr 10.0.0.0/8 drop # handle 5",
            "\t\tip saddr 10.0.0.20 drop # handle 8",
            '\t\tip saddr "10.0.0.2" drop # handle 9',
            "\t}",
            "}",
        ]
    )
    assert netrules.handles_for(listing, "10.0.0.2") == [9, 5, 4]
    assert netrules.delete_commands(listing, "10.0.0.20") == [
        ["delete", "rule", "ip", "kici", "forward", "handle", "8"],
        ["delete", "rule", "ip", "kici", "forward", "handle", "7"],
    ]


# ------------------------------------------------------------------------------------------------ dispatcher
def _selector(*labels: str) -> routing.JobSelector:
    return routing.compile_selector([{"kind": "exact", "value": v} for v in labels], [])


def _sent(effects: list[fx.Effect]) -> list[tuple[str, str]]:
    return [(e.agent_id, e.job_id) for e in effects if isinstance(e, fx.SendDispatch)]


def test_a_bound_scaler_agent_takes_only_its_job_and_only_once() -> None:
    d = Dispatcher()
    linux = routing.AgentLabels(labels=frozenset({"linux"}))
    d.job_queued(job_id="old", run_id="r", selector=_selector("linux"), created_at=1.0, now=1.0)
    d.job_queued(job_id="mine", run_id="r", selector=_selector("linux"), created_at=2.0, now=2.0)
    effects = d.agent_registered(
        agent_id="c1",
        connection_id="k1",
        labels=linux,
        now=3.0,
        max_concurrency=4,
        scaler_managed=True,
        bound_job_id="mine",
    )
    assert _sent(effects) == [("c1", "mine")]  # not the older job
    d.job_status(agent_id="c1", job_id="mine", state="running", now=4.0)
    assert _sent(d.job_status(agent_id="c1", job_id="mine", state="success", now=5.0)) == []  # one job in its life
    assert _sent(d.agent_registered(agent_id="s1", connection_id="k2", labels=linux, now=6.0)) == [("s1", "old")]


def test_a_warm_scaler_agent_takes_one_job_and_its_loss_fails_the_job_at_once() -> None:
    d = Dispatcher()
    linux = routing.AgentLabels(labels=frozenset({"linux"}))
    d.agent_registered(agent_id="w1", connection_id="k1", labels=linux, now=1.0, max_concurrency=2, scaler_managed=True)
    assert _sent(d.job_queued(job_id="a", run_id="r", selector=_selector("linux"), created_at=2.0, now=2.0)) == [
        ("w1", "a")
    ]
    assert _sent(d.job_queued(job_id="b", run_id="r", selector=_selector("linux"), created_at=3.0, now=3.0)) == []
    d.job_status(agent_id="w1", job_id="a", state="running", now=4.0)
    effects = d.agent_gone(agent_id="w1", connection_id="k1", now=5.0)
    assert fx.FailJob(job_id="a", status=fx.JobStatus.failed, reason=fx.REASON_SCALER_AGENT_LOST) in effects
