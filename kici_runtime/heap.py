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

__all__ = ["THRESHOLDS", "configure", "settle"]

THRESHOLDS = (10_000, 10, 100)
"""``gc.set_threshold`` values: young-generation size, young passes per middle pass, middle passes per full."""


def configure() -> None:
    """Apply :data:`THRESHOLDS` (call at process start)."""
    gc.set_threshold(*THRESHOLDS)


def settle() -> None:
    """Collect once and freeze what survives (call when start-up is complete)."""
    gc.collect()
    gc.freeze()
