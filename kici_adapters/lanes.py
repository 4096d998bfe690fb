"""Lane hand-off for adapters that batch concurrent callers (the inbox's group commit, batched file writes).

Each such adapter runs at most a fixed number of batches ("lanes") at once. A caller arriving while every lane
is busy queues up; the caller that ran a batch hands its lane over when the batch ends, so no caller works for
others longer than one batch and every busy lane always has exactly one leader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

import anyio

__all__ = ["Lanes", "Waiting", "hand_over"]


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


W = TypeVar("W", bound=Waiting)


class Lanes(Generic[W]):
    """The caller side of the hand-off, shared by every batching adapter: at most ``count`` batches at once.

    ``queue`` holds the callers not yet taken into a batch, oldest first; a leader takes its batch from it
    (removing what it takes) and calls ``end`` when the batch is over.
    """

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self.queue: list[W] = []
        self._busy = 0

    async def join(self, me: W, lead: Callable[[W], Awaitable[None]], finished: Callable[[W], bool]) -> None:
        """Queue ``me`` and return once its batch is over: lead one at once when a lane is free, else wait to
        be carried by another leader's batch or to be handed a lane. A caller cancelled while waiting leaves
        the queue, or, when it was just chosen to lead, still runs that batch (shielded) so no lane is lost.
        """
        self.queue.append(me)
        if self._busy < self.count:
            self._busy += 1
            await lead(me)
            return
        try:
            await me.wake.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if me.lead and not finished(me):
                    await lead(me)
                elif me in self.queue:
                    self.queue.remove(me)
            raise
        if me.lead and not finished(me):
            await lead(me)

    def end(self, batch: Iterable[W]) -> None:
        """A batch is over: hand the lane to the next leader, or free it when nobody waits."""
        if not hand_over(self.queue, batch):
            self._busy -= 1
