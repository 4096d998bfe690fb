"""The relay's ASGI application: ``/ws``, webhook ingress, ``/health`` and the read-back API.

The two routes every relayed webhook takes, ``POST /webhook/...`` and the orchestrator socket ``/ws``, are
served straight on ASGI by :class:`RelayApp` (no framework layers per request: they are most of the relay's
CPU per webhook); everything else, and the lifespan, is a small Starlette app behind it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kici_adapters.relay.store import RelayStore
from kici_runtime.relay import ingress, ws
from kici_runtime.relay.hub import WS_MAX_PAYLOAD_BYTES, RelayHub, RelaySettings

log = logging.getLogger("kici.relay")

MAX_LIST = 5000
MAX_WAIT_SECONDS = 30.0

_INTERNAL_ERROR = ingress.Reply(500, b"Internal Server Error", ((b"content-type", b"text/plain; charset=utf-8"),))
_NOT_ALLOWED = ingress.Reply(
    405, b"Method Not Allowed", ((b"content-type", b"text/plain; charset=utf-8"), (b"allow", b"POST"))
)


class _Disconnected(Exception):
    """The webhook sender went away before its body was read."""


class RelayApp:
    """The relay's ASGI callable; ``state.hub`` (and ``hub``) is the :class:`RelayHub`."""

    def __init__(self, hub: RelayHub, rest: Starlette) -> None:
        self.hub = hub
        self.state: State = rest.state
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = _webhook_route(scope["path"])
            if route is not None:
                await self._webhook(route, scope, receive, send)
                return
        elif kind == "websocket" and scope["path"] == "/ws":
            await ws.relay_websocket(ws.AsgiWebSocket(scope, receive, send), self.hub)
            return
        await self._rest(scope, receive, send)

    async def _webhook(self, route: tuple[str, str | None], scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _reply(send, _NOT_ALLOWED)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        try:
            body = await _read_body(headers, receive, WS_MAX_PAYLOAD_BYTES)
        except _Disconnected:
            return
        if body is None:
            await _reply(send, ingress.TOO_LARGE)
            return
        client = scope.get("client")
        client_ip = str(client[0]) if client else None
        org, source_id = route
        try:
            if source_id is None:
                reply = await ingress.github_webhook(self.hub, org, headers, body, client_ip)
            else:
                reply = await ingress.generic_webhook(self.hub, org, source_id, headers, body, client_ip)
        except Exception:  # answer 500 rather than drop the connection; the traceback goes to the log
            log.exception("webhook ingress failed")
            reply = _INTERNAL_ERROR
        await _reply(send, reply)


def _webhook_route(path: str) -> tuple[str, str | None] | None:
    """``(org, None)`` for ``/webhook/{org}/github``, ``(org, source_id)`` for the generic route, else None."""
    if not path.startswith("/webhook/"):
        return None
    parts = path.split("/")
    if len(parts) == 4 and parts[3] == "github" and parts[2]:
        return parts[2], None
    if len(parts) == 5 and parts[3] == "generic" and parts[2] and parts[4]:
        return parts[2], parts[4]
    return None


async def _read_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = b""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return body.join(chunks)
        chunks.append(chunk)


async def _reply(send: Send, reply: ingress.Reply) -> None:
    headers: list[Any] = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def create_app(store: RelayStore, settings: RelaySettings | None = None) -> RelayApp:
    """Build the relay app over ``store``; the hub is ``app.state.hub``."""
    hub = RelayHub(store, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run_revocation_sweeper)
            tg.start_soon(hub.run_message_flusher)
            yield
            tg.cancel_scope.cancel()
        store.flush()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/api/messages", list_messages, methods=["GET"]),
            Route("/api/connections", list_connections, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return RelayApp(hub, app)


async def health(request: Request) -> JSONResponse:
    """``GET /health``: liveness plus the number of connected orchestrators."""
    hub: RelayHub = request.app.state.hub
    return JSONResponse({"status": "ok", "connections": len(hub.connections)})


async def list_connections(request: Request) -> JSONResponse:
    """``GET /api/connections``: authenticated orchestrator sockets and their accepted routing keys."""
    hub: RelayHub = request.app.state.hub
    return JSONResponse({"connections": [c.to_json() for c in hub.connections.values()]})


async def list_messages(request: Request) -> JSONResponse:
    """``GET /api/messages?type=..&since=..&org=..&limit=..&wait=..``: recorded orchestrator messages.

    ``type`` may repeat or be comma-separated; ``since`` is an exclusive sequence number; ``wait`` (seconds,
    at most 30) long-polls until at least one matching message exists.
    """
    hub: RelayHub = request.app.state.hub
    params = request.query_params
    types = tuple(t for raw in params.getlist("type") for t in raw.split(",") if t)
    try:
        since = int(params.get("since", "0"))
        limit = min(int(params.get("limit", "500")), MAX_LIST)
        wait = min(float(params.get("wait", "0")), MAX_WAIT_SECONDS)
    except ValueError:
        return JSONResponse({"error": "since and limit must be integers, wait a number"}, status_code=400)
    if limit < 1 or since < 0 or wait < 0:
        return JSONResponse({"error": "since, limit and wait must not be negative"}, status_code=400)
    found = await hub.wait_messages(since=since, types=types, org=params.get("org"), limit=limit, wait=wait)
    return JSONResponse({"messages": [m.to_json() for m in found], "lastSeq": found[-1].seq if found else since})
