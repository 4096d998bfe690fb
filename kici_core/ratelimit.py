"""A sliding-window rate limiter (pure: the caller passes the time)."""

from __future__ import annotations

import math
from collections import deque


class SlidingWindowLimiter:
    """At most ``limit`` events per ``window`` seconds per key.

    ``hit`` records an event and returns None when it is allowed, else the seconds until the oldest event
    leaves the window (the ``Retry-After`` to send). Memory is bounded by ``limit`` timestamps per key and
    ``max_keys`` keys (the least recently used key is forgotten first).
    """

    def __init__(self, *, window: float = 60.0, max_keys: int = 10_000) -> None:
        self._window = window
        self._max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def hit(self, key: str, limit: int, now: float) -> float | None:
        q = self._events.pop(key, None)
        if q is None:
            q = deque()
            if len(self._events) >= self._max_keys:
                self._events.pop(next(iter(self._events)))
        self._events[key] = q  # re-insert: most recently used last
        cutoff = now - self._window
        while q and q[0] <= cutoff:
            q.popleft()
        if limit <= 0 or len(q) >= limit:
            return max(q[0] + self._window - now, 0.001) if q else self._window
        q.append(now)
        return None


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
