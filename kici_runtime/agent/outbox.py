"""Ordered outbound buffer for job-scoped messages.

Every job message (``job.ack``, ``job.status``, ``step.status``, ``log.chunk``, ``job.heartbeat``)
goes through one :class:`Outbox`. A connection's writer takes the head, writes it, and only then
removes it, so a message that was never written survives a disconnect and is replayed after the next
``register.ack`` with its original ``messageId`` and ``timestamp`` (spec §8.4). Unlike upstream,
statuses are buffered too, so a job that ends while the agent is offline still reports its outcome.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from kici_core.jsontypes import JSONValue

Message = dict[str, JSONValue]

# Only these may be dropped when the buffer overflows; statuses and acks are never dropped.
_DROPPABLE = frozenset({"log.chunk", "job.heartbeat"})


class Outbox:
    """A FIFO of messages awaiting a registered connection.

    ``limit`` bounds the buffer: past it the oldest droppable message is discarded and counted in
    ``dropped``. ``on_sent`` is called with each message after it has been written.
    """

    def __init__(self, *, limit: int, on_sent: Callable[[Message], None] | None = None) -> None:
        self._items: deque[Message] = deque()
        self._limit = limit
        self._on_sent = on_sent
        self._changed = anyio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> None:
        """Append a message; never blocks."""
        self._items.append(message)
        if len(self._items) > self._limit:
            for index, item in enumerate(self._items):
                if item.get("type") in _DROPPABLE:
                    del self._items[index]
                    self.dropped += 1
                    break
        self._notify()

    async def peek(self) -> Message:
        """Wait until a message is queued and return it without removing it."""
        while not self._items:
            changed = self._changed
            await changed.wait()
        return self._items[0]

    def mark_sent(self, message: Message) -> None:
        """Remove ``message`` (the head, just written) and report it to ``on_sent``."""
        if self._items and self._items[0] is message:
            self._items.popleft()
        if self._on_sent is not None:
            self._on_sent(message)
        self._notify()

    async def wait_empty(self) -> None:
        """Wait until every queued message has been written."""
        while self._items:
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
