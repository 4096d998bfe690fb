"""Which connected agent takes a job: free agents indexed by label set, ordered by load, per job selector.

:func:`kici_core.routing.choose_agent` states the rule (among eligible agents with a free slot, the least
loaded share of capacity wins, ties to the agent idle longest, then the smallest id) and checks every agent.
This index gives the same answer without looking at every agent:

* agents are grouped by label set (:class:`~kici_core.routing.AgentLabels`); eligibility
  (:meth:`~kici_core.routing.JobSelector.admits`: exact and regex matchers, excludes, mandatory labels) is
  evaluated once per distinct label set and selector, never per agent;
* per selector in use, a heap holds the free agents of the label sets it admits, keyed by (load, idle since,
  id). An agent whose state changes gets a new version and a new entry; superseded entries are dropped when
  they reach the top, and a heap that holds more than twice its agents is rebuilt.

Choosing costs O(log n) amortised; an agent's change costs O(log n) for each cached selector that admits
it; the first use of a selector evaluates it once against every distinct label set. Selectors are cached
(least recently used first out, up to ``selector_cache``).

Loads are compared as ``active / capacity`` floats: correctly rounded division keeps equal shares equal and
distinct shares ordered for capacities below 2**26 (the wire allows at most 10,000).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from kici_core import routing

__all__ = ["AgentIndex"]

_Key = tuple[float, float, str]  # (active / capacity, idle since, agent id)
_Entry = tuple[_Key, int, str]  # (key, version, agent id)


@dataclass(slots=True, eq=False)
class _Group:
    """The agents that share one label set, and the cached selectors that admit it."""

    labels: routing.AgentLabels
    members: set[str] = field(default_factory=set)
    selectors: set[routing.JobSelector] = field(default_factory=set)


@dataclass(slots=True, eq=False)
class _Slot:
    """One agent: its group, its current version and its key while it has a free slot."""

    group: _Group
    version: int = 0
    key: _Key | None = None


@dataclass(slots=True, eq=False)
class _View:
    """One selector: the label sets it admits, how many agents they hold, and the heap of free ones."""

    groups: set[routing.AgentLabels] = field(default_factory=set)
    members: int = 0
    heap: list[_Entry] = field(default_factory=list)


class AgentIndex:
    """Free agents by label set, least loaded then longest idle first, per job selector. See the module
    docstring. The caller reports every change of an agent's labels (:meth:`add`), free capacity
    (:meth:`update`) and departure (:meth:`remove`)."""

    def __init__(self, *, selector_cache: int = 1024) -> None:
        if selector_cache < 1:
            raise ValueError("selector_cache must be positive")
        self._cache_size = selector_cache
        self._slots: dict[str, _Slot] = {}
        self._groups: dict[routing.AgentLabels, _Group] = {}
        self._views: OrderedDict[routing.JobSelector, _View] = OrderedDict()
        self._version = 0
        self._free = 0

    # ------------------------------------------------------------------------------------ inspection

    @property
    def free_agents(self) -> int:
        """How many agents have a free slot (over every label set)."""
        return self._free

    @property
    def label_sets(self) -> int:
        """How many distinct label sets the connected agents have."""
        return len(self._groups)

    def eligible_label_sets(self, selector: routing.JobSelector) -> frozenset[routing.AgentLabels]:
        """The connected agents' label sets that ``selector`` admits (capacity not considered)."""
        return frozenset(self._view(selector).groups)

    # ------------------------------------------------------------------------------------ changes

    def add(self, agent_id: str, labels: routing.AgentLabels) -> None:
        """Add an agent without a free slot yet, or move a known one to ``labels`` (its slot is kept
        only if the label set is unchanged)."""
        slot = self._slots.get(agent_id)
        if slot is not None:
            if slot.group.labels == labels:
                return
            self.remove(agent_id)
        group = self._groups.get(labels)
        if group is None:
            group = self._groups[labels] = _Group(labels=labels)
            for selector, view in self._views.items():
                if selector.admits(labels):
                    group.selectors.add(selector)
                    view.groups.add(labels)
        group.members.add(agent_id)
        for selector in group.selectors:
            self._views[selector].members += 1
        self._slots[agent_id] = _Slot(group=group)

    def remove(self, agent_id: str) -> None:
        """Forget an agent (unknown ids are ignored); its heap entries become stale."""
        slot = self._slots.pop(agent_id, None)
        if slot is None:
            return
        if slot.key is not None:
            self._free -= 1
        group = slot.group
        group.members.discard(agent_id)
        for selector in group.selectors:
            self._views[selector].members -= 1
        if not group.members:
            for selector in group.selectors:
                self._views[selector].groups.discard(group.labels)
            del self._groups[group.labels]

    def update(self, agent_id: str, *, free: bool, active: int = 0, capacity: int = 1, idle_since: float = 0.0) -> None:
        """Record whether the agent can take a job now and, if so, its load and when it became idle.

        Raises:
            KeyError: the agent was not added.
        """
        slot = self._slots[agent_id]
        was_free = slot.key is not None
        self._version += 1
        slot.version = self._version
        if not free:
            slot.key = None
            self._free -= was_free
            return
        key = (active / capacity, idle_since, agent_id)
        slot.key = key
        self._free += not was_free
        entry = (key, slot.version, agent_id)
        for selector in slot.group.selectors:
            view = self._views[selector]
            heapq.heappush(view.heap, entry)
            if len(view.heap) > 2 * view.members + 16:
                self._rebuild(view)

    # ------------------------------------------------------------------------------------ choice

    def best(self, selector: routing.JobSelector) -> str | None:
        """The agent a job with ``selector`` goes to now, or ``None`` when no admitted agent has a free
        slot: the least loaded share of capacity, ties to the longest idle, then the smallest id."""
        if not self._free:
            return None
        heap = self._view(selector).heap
        slots = self._slots
        while heap:
            _key, version, agent_id = heap[0]
            slot = slots.get(agent_id)
            if slot is not None and slot.version == version and slot.key is not None:
                return agent_id
            heapq.heappop(heap)
        return None

    # ------------------------------------------------------------------------------------ internals

    def _view(self, selector: routing.JobSelector) -> _View:
        view = self._views.get(selector)
        if view is not None:
            self._views.move_to_end(selector)
            return view
        view = _View()
        for labels, group in self._groups.items():
            if selector.admits(labels):
                group.selectors.add(selector)
                view.groups.add(labels)
                view.members += len(group.members)
        self._views[selector] = view
        self._rebuild(view)
        while len(self._views) > self._cache_size:
            old, dropped = self._views.popitem(last=False)
            for labels in dropped.groups:
                self._groups[labels].selectors.discard(old)
        return view

    def _rebuild(self, view: _View) -> None:
        slots = self._slots
        heap: list[_Entry] = []
        for labels in view.groups:
            for agent_id in self._groups[labels].members:
                slot = slots[agent_id]
                if slot.key is not None:
                    heap.append((slot.key, slot.version, agent_id))
        heapq.heapify(heap)
        view.heap = heap
