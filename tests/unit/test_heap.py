"""The serving and processing processes tune the cyclic collector (kici_runtime.orchestrator.heap)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kici_runtime.orchestrator import heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@pytest.mark.usefixtures("restored_gc")
def test_configure_raises_the_thresholds() -> None:
    heap.configure()
    assert gc.get_threshold() == heap.THRESHOLDS
    young, _middle, _full = heap.THRESHOLDS
    assert young > 700  # CPython's default young-generation threshold


@pytest.mark.usefixtures("restored_gc")
def test_settle_freezes_what_is_alive_and_collects_cycles_first() -> None:
    gc.unfreeze()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle that only the collector frees
    gone = weakref.ref(a)
    del a, b
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gone() is None  # collected before the freeze, not frozen with the survivors


def test_resettle_when_the_agent_population_changed_by_a_quarter() -> None:
    # A few agents never cost a pause; thousands arriving (or leaving, or churning) do, once per quarter.
    assert not heap.should_resettle(120, 0, 0)
    assert heap.should_resettle(500, 0, 0)
    assert not heap.should_resettle(10_000, 9_000, 0)
    assert heap.should_resettle(10_000, 7_500, 0)
    assert heap.should_resettle(7_000, 10_000, 3_000)
    assert heap.should_resettle(10_000, 10_000, 2_500)
    assert not heap.should_resettle(10_000, 10_000, 2_000)


def test_resettle_keeps_live_objects_and_frees_frozen_cycles() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    alive = Node()
    dead = weakref.ref(Node())  # a cycle nothing refers to: only the collector frees it
    gc.freeze()  # frozen with the live objects, as when its agent was connected at the last settle
    try:
        gc.collect()
        assert dead() is not None
        heap.resettle()
        assert dead() is None and alive.me is alive
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
