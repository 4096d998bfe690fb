"""The agent index against a brute-force choice over every agent.

Random sequences of agents joining (each with its own ``kici:host:*`` label, as real agents send), changing
labels, gaining and losing free slots and leaving; after every step the index's choice for each probe
selector must equal :func:`routing.choose_agent` over all agents. The index either keeps every probe's view
up to date as agents change, or (a cache of two selectors) evicts and rebuilds views all the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kici_core import routing
from kici_core.agent_index import AgentIndex
from tests.support.props import examples

AGENTS = [f"agent-{i}" for i in range(6)]
LABELS = ["linux", "gpu", "arm"]
PROBES = [
    routing.compile_selector([]),
    routing.compile_selector([{"kind": "exact", "value": "linux"}]),
    routing.compile_selector([{"kind": "exact", "value": "linux"}, {"kind": "exact", "value": "gpu"}]),
    routing.compile_selector([{"kind": "regex", "source": "^kici:host:agent-[0-2]$", "flags": ""}]),
    routing.compile_selector([{"kind": "exact", "value": "gpu"}], [{"kind": "exact", "value": "arm"}]),
    routing.compile_selector([], [{"kind": "regex", "source": "G", "flags": "i"}]),
]


@dataclass
class _Agent:
    labels: routing.AgentLabels
    free: bool = False
    active: int = 0
    capacity: int = 1
    idle_since: float = 0.0


class IndexMachine(RuleBasedStateMachine):
    @initialize(cache=st.sampled_from([2, 64]))
    def setup(self, cache: int) -> None:
        self.index = AgentIndex(selector_cache=cache)
        self.agents: dict[str, _Agent] = {}

    @rule(
        agent_id=st.sampled_from(AGENTS),
        names=st.frozensets(st.sampled_from(LABELS)),
        tainted=st.booleans(),
        shared_host=st.booleans(),
    )
    def add(self, agent_id: str, names: frozenset[str], tainted: bool, shared_host: bool) -> None:
        host = "kici:host:shared" if shared_host else f"kici:host:{agent_id}"
        labels = routing.AgentLabels(
            labels=names | {host}, mandatory_labels=frozenset({"gpu"} if tainted else ()), platform="linux"
        )
        known = self.agents.get(agent_id)
        self.index.add(agent_id, labels)
        if known is not None and known.labels == labels:
            return  # same label set: the slot is kept
        self.agents[agent_id] = _Agent(labels=labels)

    @precondition(lambda self: self.agents)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.agents)))
        del self.agents[agent_id]
        self.index.remove(agent_id)

    @precondition(lambda self: self.agents)
    @rule(
        data=st.data(),
        free=st.booleans(),
        capacity=st.integers(1, 4),
        active=st.integers(0, 3),
        idle=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    )
    def update(self, data: st.DataObject, free: bool, capacity: int, active: int, idle: float) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.agents)))
        agent = self.agents[agent_id]
        agent.free, agent.capacity, agent.idle_since = free, capacity, idle
        agent.active = min(active, capacity - 1) if free else active
        self.index.update(agent_id, free=free, active=agent.active, capacity=capacity, idle_since=idle)

    @invariant()
    def agrees_with_brute_force(self) -> None:
        if not hasattr(self, "index"):
            return
        candidates = [
            routing.Candidate(
                agent_id=agent_id,
                labels=a.labels,
                active_jobs=a.active,
                max_concurrency=a.capacity,
                idle_since=a.idle_since,
                accepting=a.free,
            )
            for agent_id, a in self.agents.items()
        ]
        for selector in PROBES:
            assert self.index.best(selector) == routing.choose_agent(candidates, selector), selector.describe()
        assert self.index.free_agents == sum(1 for a in self.agents.values() if a.free)
        assert self.index.label_sets == len({a.labels for a in self.agents.values()})


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=examples(25), stateful_step_count=40, deadline=None)


def test_eligibility_is_evaluated_per_label_set() -> None:
    """10,000 agents on 100 label sets: a selector admits the sets, not each agent; the least loaded of
    the admitted sets' agents wins, ties to the one idle longest."""
    index = AgentIndex()
    for i in range(10_000):
        labels = routing.AgentLabels(labels=frozenset({"pool", f"rack-{i % 100}"}))
        index.add(f"a{i:05d}", labels)
        index.update(f"a{i:05d}", free=True, active=i % 2, capacity=2, idle_since=float(10_000 - i))
    assert index.label_sets == 100
    selector = routing.compile_selector([{"kind": "regex", "source": "^rack-1[0-9]$", "flags": ""}])
    assert len(index.eligible_label_sets(selector)) == 10
    # Idle agents on racks 10-19 have even numbers; the one registered last has been idle longest.
    assert index.best(selector) == "a09918"
    index.update("a09918", free=False)
    assert index.best(selector) == "a09916"
    index.remove("a09916")
    assert index.best(selector) == "a09914"
