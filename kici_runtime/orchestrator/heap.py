"""Garbage-collector settings for the long-running processes (serving process and processing children).

CPython's cyclic collector pauses the whole process while it runs, and a full (oldest-generation) pass walks
every tracked object: with a warm orchestrator that is tens to hundreds of milliseconds, which shows up
directly as webhook -> dispatch latency. Two standard measures keep those pauses rare and short:

* :func:`configure` raises the collection thresholds, so young-generation passes run every 10,000 net
  allocations instead of every 700 and full passes are much rarer (memory held by cyclic garbage grows by a
  few megabytes at most between passes);
* :func:`settle` runs once the process has started: one full collection, then ``gc.freeze()`` moves everything
  alive at that point (imported modules, configuration, pools, compiled routing tables) out of the
  collector's view for good, so later passes only walk what was allocated while serving.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "configure", "resettle", "settle", "should_resettle"]

THRESHOLDS = (10_000, 10, 100)
"""``gc.set_threshold`` values: young-generation size, young passes per middle pass, middle passes per full."""


def configure() -> None:
    """Apply :data:`THRESHOLDS` (call at process start)."""
    gc.set_threshold(*THRESHOLDS)


def settle() -> None:
    """Collect once and freeze what survives (call when start-up is complete)."""
    gc.collect()
    gc.freeze()


def resettle() -> None:
    """Unfreeze, collect and freeze again: for a long-lived population that changed a lot since the last
    settle (thousands of agent connections that came, or went, since). Without it every full pass walks
    every connected agent's objects, a pause that grows with the fleet; with it one pause per such change, and
    the cyclic garbage of frozen objects that went away is reclaimed here."""
    gc.unfreeze()
    settle()


def should_resettle(connected: int, at_last: int, gone: int, *, minimum: int = 500) -> bool:
    """Whether agents changed enough since the last (re)settle: ``connected`` now, ``at_last`` then, ``gone``
    disconnects since; a quarter of the larger population, and at least ``minimum``."""
    return abs(connected - at_last) + gone >= max(minimum, max(connected, at_last) // 4)
