"""Lane hand-off for adapters that batch concurrent callers (the inbox's group commit, batched file writes).

Each such adapter runs at most a fixed number of batches ("lanes") at once. A caller arriving while every lane
is busy queues up; the caller that ran a batch hands its lane over when the batch ends, so no caller works for
others longer than one batch and every busy lane always has exactly one leader.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import anyio

__all__ = ["Waiting", "hand_over"]


class Waiting(Protocol):
    """A queued caller: woken through ``wake``; ``lead`` once chosen to run the next batch of a lane."""

    lead: bool
    wake: anyio.Event


def hand_over(queue: Sequence[Waiting], batch: Iterable[Waiting]) -> bool:
    """End a batch: make the oldest queued caller not already chosen by another lane the next leader of this
    lane, then wake the batch's callers. Returns False when nobody was waiting (the lane is free).

    A caller already chosen as leader must not be chosen twice, or a lane would be lost.
    """
    nxt = next((w for w in queue if not w.lead), None)
    if nxt is not None:
        nxt.lead = True
        nxt.wake.set()
    for w in batch:
        w.wake.set()
    return nxt is not None
