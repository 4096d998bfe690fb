"""The Starlette application shared by every mode: health, readiness, metrics, webhooks, admin API, ``/ws``.

Every HTTP request first passes :class:`~kici_runtime.orchestrator.httpguard.RequestGuard` (NUL bytes in the URL, the
body-size limit, the body read timeout). ``KICI_BASE_PATH`` prefixes every route; requests that arrive without the
prefix (a proxy that strips it, such
as Caddy's ``handle_path``) are served too (decision 13).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kici_adapters import metrics
from kici_runtime.orchestrator import httpguard, webhook_routes
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.http")


async def health(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    now = datetime.now(UTC)
    return JSONResponse(
        {
            "status": "ok",
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "uptime": round(time.monotonic() - ctx.started_at, 3),
            "version": ctx.version,
            "buildCommit": ctx.build_commit,
            "buildDate": ctx.build_date,
        }
    )


async def ready(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    try:
        ok = await ctx.check_database()
    except Exception:  # readiness must answer, whatever the failure
        ok = False
    if ok:
        return JSONResponse({"status": "ready", "checks": {"database": True}})
    return JSONResponse({"status": "not ready", "checks": {"database": False}}, status_code=503)


async def metrics_endpoint(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    return Response(
        metrics.render(ctx.metric_snapshots()),
        media_type=metrics.CONTENT_TYPE,
        headers={"Content-Type": metrics.CONTENT_TYPE},
    )


class RequestIdMiddleware:
    """Echo (or create) ``X-Request-ID`` and log one ``Request completed`` line per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:200]
                break
        request_id = request_id or str(uuid.uuid4())
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if log.isEnabledFor(logging.INFO):  # skip building the fields when the line would be dropped
                log.info(
                    "Request completed",
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration": f"{(time.perf_counter() - started) * 1000:.0f}ms",
                        "requestId": request_id,
                    },
                )


def base_routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *webhook_routes.routes,
    ]


def build_app(ctx: AppContext, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """One app for every mode; ``extra_routes`` adds the admin API and ``/ws`` when wired."""
    routes: list[BaseRoute] = [*base_routes(), *extra_routes]
    if ctx.base_path:
        routes = [Mount(ctx.base_path, routes=routes), *routes]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(httpguard.RequestGuard, max_body_bytes=ctx.max_body_bytes, body_timeout=ctx.body_timeout),
        ],
    )
    app.state.ctx = ctx
    return app
