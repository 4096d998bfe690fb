"""``kici-relay``: a small stand-in for the KiCI Platform's WebSocket relay, for development and tests.

Modules: ``hub`` (connections, chunked delivery), ``ws`` (the ``/ws`` endpoint), ``ingress`` (webhook HTTP
routes), ``schemas`` (field checks of forwarded messages), ``app`` (Starlette app), ``server`` (uvicorn),
``cli`` (click). Its SQLite store (keys, sources, recorded messages) and the routing-key rules it checks live
in ``kici_adapters.relay``.
"""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``kici-relay`` console script."""
    from kici_runtime.relay import cli

    cli.main()
