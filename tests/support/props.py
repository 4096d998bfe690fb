"""How hard the property-based tests search, and whether they search the same way every run.

Each property names the examples it needs for the everyday run (`make test`, which must keep the unit tier under
ten seconds). The everyday run is derandomized: each property draws the same examples on every run and every
machine, so the suite's verdict depends on the code alone, never on which examples a run happened to draw.
Searching for new counterexamples is done on purpose: ``TEST_PROPERTY_SCALE`` multiplies every budget and turns
on random search (``make test-props`` runs at scale 10); a counterexample found that way becomes an explicit
``@example`` of its property.
"""

from __future__ import annotations

import os

from hypothesis import settings

SCALE = float(os.environ.get("TEST_PROPERTY_SCALE", "1") or "1")
SEARCH = SCALE != 1

settings.register_profile("everyday", derandomize=True, database=None)
settings.register_profile("search")  # hypothesis's defaults: random draws, failures replayed from .hypothesis/
settings.load_profile("search" if SEARCH else "everyday")


def examples(n: int) -> int:
    """The example budget for a property that needs ``n`` in the everyday run, scaled by ``TEST_PROPERTY_SCALE``."""
    return max(1, round(n * SCALE))
