"""``python -m kici_runtime.agent``: same as the ``kici-agent`` console script."""

from __future__ import annotations

from kici_runtime.agent import main

main()
