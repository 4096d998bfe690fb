"""How agent WebSockets are served: uvicorn's sans-I/O ``websockets`` protocol, with ``permessage-deflate``
negotiated without context takeover in either direction.

A connection that keeps its compression contexts ("context takeover", RFC 7692) holds a zlib compressor and
decompressor for its whole life, some 40 KiB per idle agent. Without context takeover each message is
compressed and inflated with a fresh context that is freed right after, so an idle agent costs nothing here
and agents still compress what they send (log chunks above all). Upstream's server already refuses
context takeover for what it sends (``serverNoContextTakeover``); clients must accept
``client_no_context_takeover`` in the answer (RFC 7692 §7.1.1.1), and both the reference agent and upstream's
agent do. Agents that offer no compression run uncompressed, as before.

The handshake's request and response objects are released once the socket is accepted (uvicorn would keep
them for the connection's life).

Keepalive pings are off (``ws_ping_interval=None`` in :func:`kici_runtime.orchestrator.wiring.serve`): liveness rests
on the
agents' ``heartbeat`` messages and the 180 s heartbeat timeout (agent protocol §8.6), and a ping every 20 s per
socket is the largest share of an idle fleet's CPU.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["agent_websocket_protocol"]


def agent_websocket_protocol() -> type[asyncio.Protocol]:
    """The ``uvicorn.Config(ws=...)`` protocol class (see the module docstring)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    from websockets.server import ServerProtocol

    class AgentWebSocketProtocol(WebSocketsSansIOProtocol):
        def __init__(
            self,
            config: Any,
            server_state: Any,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            extensions = []
            if config.ws_per_message_deflate:
                extensions.append(
                    ServerPerMessageDeflateFactory(
                        server_no_context_takeover=True,
                        client_no_context_takeover=True,
                        server_max_window_bits=12,
                        client_max_window_bits=12,
                        compress_settings={"memLevel": 5},
                    )
                )
            # Replaced before the handshake, which is when the extension is negotiated.
            self.conn = ServerProtocol(extensions=extensions, max_size=config.ws_max_size, logger=self.conn.logger)

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                # The handshake request and response (headers and all) are not read again: let them go.
                del self.request, self.response

    return AgentWebSocketProtocol
