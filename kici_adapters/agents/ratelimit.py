"""Per-connection rate and size limits for agent sockets (agent-protocol spec §2.4).

Two token buckets (messages and bytes) plus hard size caps. ``heartbeat`` is exempt; the caller decides
which message types are never dropped (they are still counted). Time is passed in (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]

HARD_MAX_CHARS = 4_194_304
BYTE_BURST = 2_097_152
BYTE_REFILL_PER_S = 512_000
MSG_BURST = 200
MSG_REFILL_PER_S = 100
SUSTAINED_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """``close`` (a reason for a 4003 close), else ``drop`` with ``retry_after_ms``, else allowed."""

    close: str | None = None
    drop: bool = False
    retry_after_ms: int = 0


class RateLimiter:
    """Token buckets for one connection."""

    def __init__(self, now: float) -> None:
        self._msgs = float(MSG_BURST)
        self._bytes = float(BYTE_BURST)
        self._at = now
        self._over_since: float | None = None

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._msgs = min(float(MSG_BURST), self._msgs + elapsed * MSG_REFILL_PER_S)
        self._bytes = min(float(BYTE_BURST), self._bytes + elapsed * BYTE_REFILL_PER_S)

    def check(self, size: int, now: float, *, force: bool = False) -> Decision:
        """Account one message of ``size`` characters. ``force`` counts it but never drops it."""
        if size > HARD_MAX_CHARS:
            return Decision(close="Message too large")
        if size > BYTE_BURST:
            return Decision(close="Message exceeds byte burst capacity")
        self._refill(now)
        if self._msgs >= 1 and self._bytes >= size:
            self._msgs -= 1
            self._bytes -= size
            self._over_since = None
            return Decision()
        if self._over_since is None:
            self._over_since = now
        elif now - self._over_since > SUSTAINED_S:
            return Decision(close="Sustained rate limit violation")
        if force:
            self._msgs = max(0.0, self._msgs - 1)
            self._bytes = max(0.0, self._bytes - size)
            return Decision()
        wait_msgs = 0.0 if self._msgs >= 1 else (1 - self._msgs) / MSG_REFILL_PER_S
        wait_bytes = 0.0 if self._bytes >= size else (size - self._bytes) / BYTE_REFILL_PER_S
        return Decision(drop=True, retry_after_ms=max(1, int(max(wait_msgs, wait_bytes) * 1000) + 1))
