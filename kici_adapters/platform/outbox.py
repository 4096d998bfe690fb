"""The Platform outbox's contract, and ``MemoryPlatformOutbox``, that contract in memory.

The outbox stores domain events (``kici_core.platform_events``), not frames. The durable one is
``kici_adapters.postgres.outbox.PgPlatformOutbox`` (the ``platform_outbox`` table); ``MemoryPlatformOutbox`` is
the same contract in memory (upstream's ring buffer), for tests and tools. A drain turns each event into its
frame (``kici_adapters.platform.messages.frame``, the one place that knows the frames), sends them oldest first
and lets them go only once the Platform's WebSocket layer has received them (``Confirm``).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import anyio

from kici_adapters import metrics
from kici_adapters.platform import messages
from kici_core import platform_events
from kici_core.jsontypes import JSONObject

DEFAULT_CAP = 10_000
DEFAULT_BATCH = 200

SendFrame = Callable[[JSONObject], Awaitable[None]]
"""Writes one frame to the socket; raises when the link is gone."""
Confirm = Callable[[], Awaitable[None]]
"""Returns once the peer has received every frame sent before the call (a ping/pong round trip)."""


def new_id() -> str:
    """A fresh ``messageId``."""
    return str(uuid.uuid4())


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


def epoch_ms(value: object) -> int:
    """A stored timestamp as epoch milliseconds (now when it is not a datetime)."""
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else now_ms()


class MemoryPlatformOutbox:
    """The outbox contract in memory: a FIFO of at most ``cap`` events (oldest dropped and counted), each turned
    into its frame when sent."""

    def __init__(
        self, *, cap: int = DEFAULT_CAP, ids: Callable[[], str] = new_id, now_ms: Callable[[], int] = now_ms
    ) -> None:
        self.cap = cap
        self.items: collections.deque[tuple[platform_events.PlatformEvent, int]] = collections.deque()
        self.dropped = 0
        self._ids = ids
        self._now_ms = now_ms
        self._wake = anyio.Event()

    async def publish(self, event: platform_events.PlatformEvent) -> None:
        """Queue ``event`` (stamped with the current time)."""
        self.items.append((event, self._now_ms()))
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, poll_seconds: float) -> None:
        with anyio.move_on_after(poll_seconds):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def drain(self, send: SendFrame, confirm: Confirm) -> int:
        """Send queued messages in order; a message leaves the queue only after ``confirm`` returns."""
        total = 0
        while self.items:
            batch = list(self.items)[:DEFAULT_BATCH]
            for event, stamped in batch:
                await send(messages.frame(event.KIND, event.record(), message_id=self._ids(), timestamp_ms=stamped))
            await confirm()
            for _ in batch:
                self.items.popleft()
            total += len(batch)
        return total

    async def trim(self) -> int:
        dropped = 0
        while len(self.items) > self.cap:
            self.items.popleft()
            dropped += 1
        if dropped:
            self.dropped += dropped
            metrics.platform_buffer_dropped.inc(dropped)
        return dropped

    async def size(self) -> int:
        return len(self.items)
