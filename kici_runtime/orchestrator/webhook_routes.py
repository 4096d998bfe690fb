"""Direct webhook ingestion: ``POST /webhook/<orgId>/github`` and ``POST /webhook/<orgId>/generic/<sourceId>``.

Routes only size-check, verify and accept durably (event_log row + inbox row + payload object, one commit)
before answering; processing runs from the inbox in the background worker (decision 2).

Hostile senders: the org id and source id of the URL are checked against strict character sets first (400).
The signature is verified before any rate limit is counted: only verified deliveries count against a source's
``rate_limit_rpm``, so unsigned traffic cannot use up a source's budget; requests that fail verification (or
name an unknown source) are limited per client address on their own (429 instead of 401/404 beyond the
limit). JSON nested deeper than :data:`kici_core.jsontypes.MAX_DEPTH` is refused with 400.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kici_adapters import metrics
from kici_core import dedup, errors, events, identifiers, jsontypes, webhooks
from kici_core.ports import Delivery, GenericSource
from kici_core.ratelimit import retry_after_header
from kici_runtime.orchestrator import ingest
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.webhooks")

SYSTEM_ORG = "__system__"


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


def _unverified(ctx: AppContext, request: Request, headers: dict[str, str], status: int, reason: str,
                **extra: Any) -> JSONResponse:
    """The answer to a request that did not pass verification (unknown source, bad signature): counted per
    client address; over the limit it becomes 429."""
    address = _client_ip(request, headers, ctx.trusted_proxy) or "unknown"
    wait = ctx.unverified_limiter.hit(f"addr:{address}", ctx.unverified_rpm, ctx.clock.monotonic())
    if wait is not None:
        return JSONResponse({"rejected": True, "reason": "Too many unverified requests from this address"},
                            status_code=429, headers={"Retry-After": retry_after_header(wait)})
    return _reject(status, reason, **extra)


def _too_deep(exc: ValueError) -> JSONResponse:
    return _reject(400, f"Invalid payload: {exc}")


async def _accept(ctx: AppContext, delivery: Delivery) -> bool:
    """Durably accept; True when it was a duplicate. Storage outages become 503 upstream."""
    return await ingest.accept(ctx, delivery)  # shared with the Platform relay


def _unavailable() -> JSONResponse:
    return JSONResponse({"error": "Service unavailable: storage is not reachable, retry later"}, status_code=503,
                        headers={"Retry-After": "5"})


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
    try:
        source = await ctx.sources.github_by_routing_key(f"github:{target_id}")
        if source is None or source.customer_id not in (org_id, "__default__"):
            return _unverified(ctx, request, headers, 404, "Unknown organization")
        secrets = await ingest.github_secrets(ctx.secrets, source)  # shared with the Platform relay
    except errors.Unavailable:
        return _unavailable()
    except errors.SecretDecryptError:
        log.error("cannot decrypt the webhook secret of a GitHub source", extra={"routingKey": source.routing_key if source else None})
        return _reject(500, "Source verification misconfigured")
    if not secrets:
        return _reject(500, "Source verification misconfigured")
    if not webhooks.verify_any_github_signature(secrets, body, headers.get("x-hub-signature-256")):
        metrics.webhooks_received.labels(source="direct", event="unknown").inc()
        return _unverified(ctx, request, headers, 401, "Invalid signature")
    try:
        payload = webhooks.github_body_json(body, headers.get("content-type"))
    except jsontypes.JSONTooDeep as exc:
        return _too_deep(exc)
    except ValueError:  # UnicodeDecodeError included
        return _reject(400, "Invalid payload")
    if not isinstance(payload, dict):
        return _reject(400, "Invalid payload")
    try:
        key = dedup.github_dedup_key(org_id, headers)
    except errors.InvalidInput as exc:
        return _reject(400, exc.message)
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    stored = body if headers.get("content-type", "application/json").startswith("application/json") else (
        json.dumps(payload, separators=(",", ":")).encode())
    metrics.webhooks_received.labels(source="direct", event=event).inc()
    delivery = Delivery(
        org_id=key.org_id, delivery_id=key.delivery_id, routing_key=source.routing_key, event=event,
        action=action, source="direct", provider="github", body=stored, received_at=ctx.clock.now(),
    )
    try:
        duplicate = await _accept(ctx, delivery)
    except errors.Unavailable:
        return _unavailable()
    if duplicate:
        return JSONResponse({"accepted": True, "deliveryId": key.delivery_id, "duplicate": True}, status_code=200)
    log.info("Webhook accepted", extra={"deliveryId": key.delivery_id, "event": event, "routingKey": source.routing_key})
    if event == "ping":
        return JSONResponse({"accepted": True, "deliveryId": key.delivery_id, "event": "ping"}, status_code=200)
    return JSONResponse({"accepted": True, "deliveryId": key.delivery_id}, status_code=202)


async def _source_secret(ctx: AppContext, source: GenericSource) -> str | None:
    return await ingest.generic_secret(ctx.secrets, source)  # shared with the Platform relay


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
    try:
        source = await ctx.sources.generic_by_org_and_name(org_id, source_name)
    except errors.Unavailable:
        return _unavailable()
    if source is not None and source.provider_type == "local" and not ctx.local_sources_enabled:
        log.warning("delivery for a local source refused: local sources are disabled "
                    "(set KICI_DEV=true or KICI_ALLOW_LOCAL_SOURCES=true)", extra={"routingKey": source.routing_key})
        source = None
    if source is None or not source.enabled:
        return _unverified(ctx, request, headers, 404, "Unknown source")
    if len(body) > source.max_payload_bytes:
        return _reject(413, "Payload too large", maxBytes=source.max_payload_bytes)
    method = source.verification_method
    if method not in webhooks.GENERIC_METHODS:
        return _reject(500, "Source verification misconfigured")
    try:
        secret = await _source_secret(ctx, source)
    except errors.Unavailable:
        return _unavailable()
    except errors.SecretDecryptError:
        log.error("cannot decrypt the secret of a generic source", extra={"routingKey": source.routing_key})
        return _reject(500, "Source verification misconfigured")
    if method in webhooks.SECRET_METHODS and secret is None:
        return _reject(500, "Source verification misconfigured")
    client_ip = _client_ip(request, headers, ctx.trusted_proxy)
    if not webhooks.verify_generic(method, source.verification_config, secret, headers, body, client_ip):
        metrics.webhooks_received.labels(source="generic", event="unknown").inc()
        return _unverified(ctx, request, headers, 401, "Invalid signature")
    # only verified deliveries count against the source's limit
    wait = ctx.limiter.hit(source.id, source.rate_limit_rpm, ctx.clock.monotonic())
    if wait is not None:
        return JSONResponse({"rejected": True, "reason": "Rate limit exceeded"}, status_code=429,
                            headers={"Retry-After": retry_after_header(wait)})

    content_type = headers.get("content-type")
    if source.provider_type == "local":
        try:
            payload_value = jsontypes.loads(body)
        except jsontypes.JSONTooDeep as exc:
            return _too_deep(exc)
        except ValueError:
            return _reject(400, "Local source requires JSON body")
        if not isinstance(payload_value, dict):
            return _reject(400, "Local source requires JSON body")
        payload: dict[str, Any] = payload_value
        event = headers.get("x-event-type", "").strip()
        if not event:
            return _reject(400, "Missing x-event-type header for local source")
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
    else:
        try:
            payload = events.parse_generic_body(body, content_type)
        except jsontypes.JSONTooDeep as exc:
            return _too_deep(exc)
        event = events.generic_event_type(payload, headers, event_type_header=source.event_type_header,
                                          event_type_path=source.event_type_path)
        action = None if event == "default" else event
        if source.allowed_events and event not in source.allowed_events:
            return JSONResponse({"accepted": True, "status": "filtered",
                                 "reason": f"Event '{event}' not in allowed list"}, status_code=200)
    try:
        key = dedup.generic_dedup_key(
            org_id=org_id, routing_key=source.routing_key, headers=headers, fallback_id=ctx.ids(), body=payload,
            idempotency_key_header=source.idempotency_key_header,
            idempotency_key_path=source.idempotency_key_path, local=source.provider_type == "local",
        )
    except errors.InvalidInput as exc:
        return _reject(400, exc.message)
    metrics.webhooks_received.labels(source="generic", event=event).inc()
    delivery = Delivery(
        org_id=key.org_id, delivery_id=key.delivery_id, routing_key=source.routing_key, event=event,
        action=action, source="direct", provider=source.provider_type,
        body=json.dumps(payload, separators=(",", ":")).encode(), received_at=ctx.clock.now(),
    )
    try:
        duplicate = await _accept(ctx, delivery)
    except errors.Unavailable:
        return _unavailable()
    if duplicate:
        return JSONResponse({"accepted": True, "deliveryId": key.delivery_id, "duplicate": True}, status_code=200)
    log.info("Generic webhook accepted", extra={"deliveryId": key.delivery_id, "event": event,
                                                "routingKey": source.routing_key})
    return JSONResponse({"accepted": True, "deliveryId": key.delivery_id}, status_code=202)


routes = [
    Route("/webhook/{org_id}/github", github_webhook, methods=["POST"]),
    Route("/webhook/{org_id}/generic/{source_id}", generic_webhook, methods=["POST"]),
]
