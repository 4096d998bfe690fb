"""The serving and processing processes tune the cyclic collector (kici_runtime.heap)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kici_runtime import heap


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
