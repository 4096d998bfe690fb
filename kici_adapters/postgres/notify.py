"""Coalescing ``NOTIFY`` on a dedicated connection, off the hot path.

A transaction that runs ``NOTIFY`` takes a database-wide lock from its pre-commit to the end of its commit, so
notifying inside every per-delivery transaction serialises those commits (each waiting for the previous one's
WAL flush). :class:`Notifier` instead sends one notification per burst after the work has committed: ``wake()``
only sets a flag, and the loop in ``run()`` sends ``pg_notify(channel, '')`` whenever the flag is up.
"""

from __future__ import annotations

import logging

import anyio
import psycopg

from kici_adapters.postgres.pool import Connection, connect
from kici_core import errors

log = logging.getLogger("kici.notify")


class Notifier:
    """One notification per burst of ``wake()`` calls on ``channel``; reconnects when its connection breaks."""

    def __init__(self, url: str, channel: str) -> None:
        self._url = url
        self.channel = channel
        self._wake = anyio.Event()
        self.sent = 0
        """Notifications sent (diagnostics and tests)."""

    def wake(self) -> None:
        """Ask for a notification (call from the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        """Notify until cancelled."""
        conn: Connection | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = await connect(self._url, autocommit=True)
                    await conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
                    self.sent += 1
                except (errors.Unavailable, psycopg.Error) as exc:
                    # listeners also poll, so a lost notification only delays them
                    log.warning("could not send a notification", extra={"channel": self.channel, "error": str(exc)})
                    conn = None
                    await anyio.sleep(1.0)
        finally:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()
