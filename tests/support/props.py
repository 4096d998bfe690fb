"""How hard the property-based tests search.

Each property names the examples it needs for the everyday run (`make test`, which must keep the unit tier under
ten seconds); ``TEST_PROPERTY_SCALE`` multiplies every budget for a deeper search on purpose, e.g.
``make test-props`` (scale 10). Failures hypothesis finds are replayed first on the next run either way.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("TEST_PROPERTY_SCALE", "1") or "1")


def examples(n: int) -> int:
    """The example budget for a property that needs ``n`` in the everyday run, scaled by ``TEST_PROPERTY_SCALE``."""
    return max(1, round(n * SCALE))
