"""Direct webhook ingestion: ``POST /webhook/<orgId>/github`` and ``POST /webhook/<orgId>/generic/<sourceId>``.

Routes only parse the URL and headers and size-check the body, then call the accept use case
(``kici_core.accept``, shared with the Platform relay), which verifies and accepts durably (event_log row +
inbox row + payload object, one commit); the route maps its outcome to the HTTP answer. Processing runs from
the inbox in the background worker (decision 2).

Hostile senders: the org id and source id of the URL are checked against strict character sets first (400).
The signature is verified before any rate limit is counted: only verified deliveries count against a source's
``rate_limit_rpm``, so unsigned traffic cannot use up a source's budget; requests that fail verification (or
name an unknown source) are limited per client address on their own (429 instead of 401/404 beyond the
limit). JSON nested deeper than :data:`kici_core.jsontypes.MAX_DEPTH` is refused with 400.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kici_core import accept as accepting
from kici_core import errors, identifiers, webhooks
from kici_core.ratelimit import retry_after_header
from kici_runtime.orchestrator import ingest
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.webhooks")


class BodyTooLarge(Exception):
    pass


def _reject(status: int, reason: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"rejected": True, "reason": reason, **extra}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> PlainTextResponse:
    return PlainTextResponse("Payload Too Large", status_code=413)


def _platform_refusal() -> JSONResponse:
    return JSONResponse(
        {"rejected": True, "reason": "Direct webhook ingestion is disabled in platform mode", "mode": "platform"},
        status_code=403,
    )


def _client_ip(request: Request, headers: dict[str, str], trusted_proxy: bool) -> str | None:
    if trusted_proxy:
        fwd = headers.get("x-forwarded-for")
        if fwd:
            return fwd.split(",")[0].strip() or None
        if headers.get("x-real-ip"):
            return headers["x-real-ip"].strip()
    return request.client.host if request.client else None


def _bad_ids(org_id: str, source_name: str | None = None) -> JSONResponse | None:
    """400 when the URL's org id (or source id) breaks its character set, else None."""
    try:
        identifiers.check_org_id(org_id)
        if source_name is not None:
            identifiers.check_source_name(source_name)
    except errors.InvalidInput as exc:
        return _reject(400, f"Invalid URL: {exc.message}")
    return None


def _unverified(
    ctx: AppContext, request: Request, headers: dict[str, str], status: int, reason: str, **extra: Any
) -> JSONResponse:
    """The answer to a request that did not pass verification (unknown source, bad signature): counted per
    client address; over the limit it becomes 429."""
    address = _client_ip(request, headers, ctx.trusted_proxy) or "unknown"
    wait = ctx.unverified_limiter.hit(f"addr:{address}", ctx.unverified_rpm, ctx.clock.monotonic())
    if wait is not None:
        return JSONResponse(
            {"rejected": True, "reason": "Too many unverified requests from this address"},
            status_code=429,
            headers={"Retry-After": retry_after_header(wait)},
        )
    return _reject(status, reason, **extra)


def _unavailable() -> JSONResponse:
    return JSONResponse(
        {"error": "Service unavailable: storage is not reachable, retry later"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


_STATUS = {"bad_request": 400, "unknown_source": 404, "bad_signature": 401, "misconfigured": 500}


def _answer(
    ctx: AppContext, request: Request, headers: dict[str, str], outcome: accepting.Outcome, *, ping: bool = False
) -> Response:
    """The HTTP answer to the accept use case's outcome (webhooks spec §2.1, §2.5)."""
    if isinstance(outcome, accepting.Filtered):
        return JSONResponse({"accepted": True, "status": "filtered", "reason": outcome.reason}, status_code=200)
    if isinstance(outcome, accepting.Accepted):
        if outcome.duplicate:
            return JSONResponse(
                {"accepted": True, "deliveryId": outcome.delivery_id, "duplicate": True}, status_code=200
            )
        if ping:
            return JSONResponse({"accepted": True, "deliveryId": outcome.delivery_id, "event": "ping"}, status_code=200)
        return JSONResponse({"accepted": True, "deliveryId": outcome.delivery_id}, status_code=202)
    if outcome.code == "too_large":
        return _reject(413, outcome.reason, maxBytes=outcome.max_bytes)
    if outcome.code == "rate_limited":
        return JSONResponse(
            {"rejected": True, "reason": outcome.reason},
            status_code=429,
            headers={"Retry-After": retry_after_header(outcome.retry_after or 0.0)},
        )
    if outcome.code in ("unknown_source", "bad_signature"):
        return _unverified(ctx, request, headers, _STATUS[outcome.code], outcome.reason)
    return _reject(_STATUS[outcome.code], outcome.reason)


async def _accept(
    ctx: AppContext, request: Request, headers: dict[str, str], incoming: accepting.Incoming, *, ping: bool = False
) -> Response:
    try:
        outcome = await ingest.accept(ctx, incoming)
    except errors.Unavailable:
        return _unavailable()
    return _answer(ctx, request, headers, outcome, ping=ping)


async def github_webhook(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    if not ctx.direct_webhooks_enabled:
        return _platform_refusal()
    org_id = request.path_params["org_id"]
    if (bad := _bad_ids(org_id)) is not None:
        return bad
    try:
        body = await read_body(request, ctx.max_body_bytes)
    except BodyTooLarge:
        return _too_large()
    headers = webhooks.lower_headers(request.headers.items())
    target_id = headers.get("x-github-hook-installation-target-id", "").strip()
    if headers.get("x-github-hook-installation-target-type") != "integration" or not target_id:
        return _reject(400, "Missing GitHub App target headers")
    event = headers.get("x-github-event", "").strip()
    delivery_raw = headers.get("x-github-delivery", "").strip()
    if not event or not delivery_raw:
        return _reject(400, "Missing GitHub event headers")
    incoming = accepting.Incoming(
        via="direct",
        headers=headers,
        body=body,
        routing_key=f"github:{target_id}",
        org_id=org_id,
        event=event,
        delivery_id=delivery_raw,
        signature=headers.get("x-hub-signature-256"),
    )
    return await _accept(ctx, request, headers, incoming, ping=event == "ping")


async def generic_webhook(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    if not ctx.direct_webhooks_enabled:
        return _platform_refusal()
    org_id = request.path_params["org_id"]
    source_name = request.path_params["source_id"]
    if (bad := _bad_ids(org_id, source_name)) is not None:
        return bad
    try:
        body = await read_body(request, min(ctx.generic_max_body_bytes, ctx.max_body_bytes))
    except BodyTooLarge:
        return _too_large()
    headers = webhooks.lower_headers(request.headers.items())
    incoming = accepting.Incoming(
        via="direct",
        headers=headers,
        body=body,
        org_id=org_id,
        source_name=source_name,
        client_ip=_client_ip(request, headers, ctx.trusted_proxy),
    )
    return await _accept(ctx, request, headers, incoming)


routes = [
    Route("/webhook/{org_id}/github", github_webhook, methods=["POST"]),
    Route("/webhook/{org_id}/generic/{source_id}", generic_webhook, methods=["POST"]),
]
