"""A loopback TCP load balancer standing in for Caddy's ``reverse_proxy`` in front of several orchestrators.

Each new connection goes to the next backend in round-robin order; a backend that refuses the connection (its
process died) is skipped, like a proxy's passive health check. Bytes are piped both ways unchanged (HTTP and
WebSocket alike); when either side closes, the other is closed too, so an agent whose orchestrator died sees
its socket close and reconnects — through the balancer, to a live orchestrator.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

import anyio
from anyio.abc import SocketStream, TaskStatus

__all__ = ["Balancer"]


async def _pipe(src: SocketStream, dst: SocketStream, scope: anyio.CancelScope) -> None:
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        async for chunk in src:
            await dst.send(chunk)
    scope.cancel()


class Balancer:
    """Round-robin TCP proxy on ``127.0.0.1``; start it with ``port = await tg.start(balancer.serve)``.

    Attributes:
        routed: backend port chosen for each accepted connection, in order (for failure messages).
    """

    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self.routed: list[int] = []
        self._next = 0

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            task_status.started(int(listener.extra(anyio.abc.SocketAttribute.local_port)))
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            upstream: SocketStream | None = None
            for _ in range(len(self.backends)):
                port = self.backends[self._next % len(self.backends)]
                self._next += 1
                try:
                    upstream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    continue
                self.routed.append(port)
                break
            if upstream is None:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(_pipe, upstream, client, tg.cancel_scope)
