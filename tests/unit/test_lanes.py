"""Lane hand-off between batches (kici_adapters.lanes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from kici_adapters.lanes import hand_over

pytestmark = pytest.mark.anyio


@dataclass(eq=False)
class Caller:
    wake: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False


async def test_the_oldest_caller_not_already_leading_takes_the_lane() -> None:
    chosen_elsewhere, next_in_line, later = Caller(lead=True), Caller(), Caller()
    batch = [Caller(), Caller()]
    assert hand_over([chosen_elsewhere, next_in_line, later], batch) is True
    assert next_in_line.lead and next_in_line.wake.is_set()
    assert not later.lead and not later.wake.is_set()
    assert not chosen_elsewhere.wake.is_set()  # it leads another lane already: not chosen twice
    assert all(c.wake.is_set() for c in batch)


async def test_nobody_waiting_frees_the_lane() -> None:
    batch = [Caller()]
    assert hand_over([], batch) is False
    assert hand_over([Caller(lead=True)], batch) is False
    assert batch[0].wake.is_set()
