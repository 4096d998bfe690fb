"""How a running orchestrator reacts to SIGTERM, SIGINT and SIGHUP.

The three signals are handled from the moment ``serve`` begins until everything it opened is closed, so that
no signal can end the process halfway through (an embedded PostgreSQL left running, a lock left held):

* during start-up, the first one abandons the start: what was already started (the embedded database
  included) is stopped again;
* while serving, the first one drains: agents are told to reconnect later, HTTP requests in flight finish,
  background loops and processing children stop;
* every later one cuts the HTTP drain short (open connections are closed) and is otherwise only logged:
  the clean-up still runs to its end.

A terminal's Ctrl-C reaches every process of the foreground group, so a parent that also forwards a SIGTERM
makes two signals: the second must not kill.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

log = logging.getLogger("kici.runtime")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

Drain = Callable[[bool, str], Awaitable[None]]
"""Called with (first signal?, signal name) while serving."""


class Shutdown:
    """Routes stop signals to the current phase: start-up (cancel ``scope``), serving (``drain``), stopping."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        """Wraps start-up and serving; cancelled by a signal that arrives before serving began."""
        self.received = 0
        self._drain: Drain | None = None
        self._phase = "starting"

    def serving(self, drain: Drain) -> None:
        """From now on signals drain the running server."""
        self._phase = "serving"
        self._drain = drain

    def stopping(self) -> None:
        """From now on signals are only logged: the clean-up runs to its end."""
        self._phase = "stopping"
        self._drain = None

    async def watch(self, signals: AsyncIterator[int]) -> None:
        """Handle every signal of ``signals`` until cancelled."""
        async for signum in signals:
            name = signal.Signals(signum).name
            self.received += 1
            first = self.received == 1
            if self._drain is not None:
                await self._drain(first, name)
            elif self._phase == "starting" and first:
                log.info(f"Shutdown requested ({name}) during start-up: stopping what has started")
                self.scope.cancel()
            else:
                log.info(f"{name} received: already stopping")
