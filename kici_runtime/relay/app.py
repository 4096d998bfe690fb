"""The relay's Starlette application: ``/ws``, webhook ingress, ``/health`` and the read-back API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from kici_runtime.relay import ingress, ws
from kici_runtime.relay.hub import RelayHub, RelaySettings
from kici_runtime.relay.store import RelayStore

MAX_LIST = 5000
MAX_WAIT_SECONDS = 30.0


def create_app(store: RelayStore, settings: RelaySettings | None = None) -> Starlette:
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
            WebSocketRoute("/ws", ws.relay_websocket),
            Route("/webhook/{org_id}/github", ingress.github_webhook, methods=["POST"]),
            Route("/webhook/{org_id}/generic/{source_id}", ingress.generic_webhook, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/api/messages", list_messages, methods=["GET"]),
            Route("/api/connections", list_connections, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app


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
    return JSONResponse(
        {"messages": [m.to_json() for m in found], "lastSeq": found[-1].seq if found else since}
    )
