"""Serving the relay with uvicorn (the CLI's ``serve`` and the tests' in-process relay)."""

from __future__ import annotations

import socket

import anyio
import uvicorn
from starlette.types import ASGIApp

from kici_runtime.relay.hub import WS_MAX_PAYLOAD_BYTES


def uvicorn_config(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "info", compression: bool = False
) -> uvicorn.Config:
    """A uvicorn config that accepts 25 MiB WebSocket frames.

    ``compression`` accepts the orchestrator's ``permessage-deflate`` offer as the hosted Platform does. Off by
    default: the relay runs next to the orchestrator (loopback or a LAN), where compressing every frame on both
    ends only costs CPU; the protocol works either way."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_max_size=WS_MAX_PAYLOAD_BYTES,
        lifespan="on",
        log_level=log_level,
        proxy_headers=False,
        ws_per_message_deflate=compression,
    )


class RelayServer(uvicorn.Server):
    """``uvicorn.Server`` that sets ``ready`` once listening (or once startup has failed)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then signal ``ready``."""
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
