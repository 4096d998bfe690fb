"""HTTP ingress: GitHub App and generic webhooks, verified here, then relayed to an orchestrator.

``POST /webhook/{org}/github`` and ``POST /webhook/{org}/generic/{source_id}``. The answer is the relayed
``webhook.ack`` mapped to HTTP (accepted 200, rejected_signature 401, rejected_unknown_source 404,
rejected_misconfigured 500), or 503 with ``Retry-After: 5`` when no orchestrator acked.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from kici_core.jsontypes import JSONValue
from kici_runtime import webhook_routes
from kici_runtime.relay import routing, verify
from kici_runtime.relay.hub import WS_MAX_PAYLOAD_BYTES, AckOutcome, Delivery, RelayHub

log = logging.getLogger("kici.relay")

ACK_STATUS = {
    "accepted": 200,
    "rejected_signature": 401,
    "rejected_unknown_source": 404,
    "rejected_misconfigured": 500,
}

# GitHub headers worth forwarding besides content-type and the signature.
_GITHUB_HEADERS = (
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
    "user-agent",
)
# Never forwarded for generic sources: they describe the hop, not the delivery.
_HOP_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip")


def _rejected(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"rejected": True, "reason": reason}, status_code=status)


def _too_large() -> PlainTextResponse:
    return PlainTextResponse("Payload Too Large", status_code=413)


async def read_body(request: Request, limit: int = WS_MAX_PAYLOAD_BYTES) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes."""
    try:
        return await webhook_routes.read_body(request, limit)
    except webhook_routes.BodyTooLarge:
        return None


def ack_response(outcome: AckOutcome | None, delivery_id: str) -> Response:
    """Map an ack (or its absence) to the HTTP answer the webhook sender gets."""
    if outcome is None:
        return JSONResponse(
            {"error": "No orchestrator available"}, status_code=503, headers={"Retry-After": "5"}
        )
    status = ACK_STATUS.get(outcome.result, 500)
    if status == 200:
        return JSONResponse({"accepted": True, "deliveryId": delivery_id}, status_code=200)
    body: dict[str, JSONValue] = {"rejected": True, "result": outcome.result, "reason": outcome.reason}
    return JSONResponse(body, status_code=status)


def _hub(request: Request) -> RelayHub:
    hub: RelayHub = request.app.state.hub
    return hub


def _github_action(body: bytes, content_type: str) -> str | None:
    payload: object = None
    try:
        if "application/x-www-form-urlencoded" in content_type:
            form = urllib.parse.parse_qs(body.decode("utf-8"))
            payload = json.loads(form.get("payload", ["{}"])[-1])
        else:
            payload = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    action = payload.get("action") if isinstance(payload, dict) else None
    return action if isinstance(action, str) else None


async def github_webhook(request: Request) -> Response:
    """``POST /webhook/{org}/github``: a GitHub App delivery."""
    hub = _hub(request)
    org = request.path_params["org_id"]
    body = await read_body(request)
    if body is None:
        return _too_large()
    headers = request.headers
    target_id = headers.get("x-github-hook-installation-target-id", "")
    if headers.get("x-github-hook-installation-target-type") != "integration" or not target_id:
        return _rejected(400, "Missing GitHub App target headers")
    event = headers.get("x-github-event", "")
    delivery_id = headers.get("x-github-delivery", "")
    if not event or not delivery_id:
        return _rejected(400, "Missing GitHub event headers")
    routing_key = routing.github_key(target_id)
    source = hub.store.get_source(routing_key)
    if source is None or source.org != org or hub.negatively_cached(org, routing_key):
        return _rejected(404, "Unknown organization")
    signature = headers.get("x-hub-signature-256")
    if not verify.github_signature_ok(body, signature, [source.secret]):
        return _rejected(401, "Invalid signature")
    content_type = headers.get("content-type", "application/octet-stream")
    forwarded = {name: headers[name] for name in _GITHUB_HEADERS if name in headers}
    forwarded["content-type"] = content_type
    forwarded["x-hub-signature-256"] = signature or ""
    delivery = Delivery(
        org=org,
        routing_key=routing_key,
        delivery_id=delivery_id,
        event=event,
        action=_github_action(body, content_type),
        signature_header_name="x-hub-signature-256",
        signature_header=signature,
        client_ip=request.client.host if request.client else None,
        headers=forwarded,
        body=body,
        request_id=str(uuid.uuid4()),
    )
    return ack_response(await hub.deliver(delivery), delivery_id)


async def generic_webhook(request: Request) -> Response:
    """``POST /webhook/{org}/generic/{source_id}``: a generic webhook."""
    hub = _hub(request)
    org = request.path_params["org_id"]
    body = await read_body(request)
    if body is None:
        return _too_large()
    routing_key = routing.generic_key(org, request.path_params["source_id"])
    source = hub.store.get_source(routing_key)
    if source is None or source.org != org or hub.negatively_cached(org, routing_key):
        return _rejected(404, "Unknown source")
    headers = {k.lower(): v for k, v in request.headers.items()}
    if not verify.generic_signature_ok(source, headers, body):
        return _rejected(401, "Invalid signature")
    forwarded = {k: v for k, v in headers.items() if k.startswith("x-") and k not in _HOP_HEADERS}
    forwarded["content-type"] = headers.get("content-type", "application/octet-stream")
    if source.header and source.header in headers:
        forwarded[source.header] = headers[source.header]
    delivery_id = (
        headers.get("x-delivery-id") or headers.get("x-request-id") or headers.get("x-idempotency-key")
    ) or str(uuid.uuid4())
    signed = source.method == "hmac_sha256"
    delivery = Delivery(
        org=org,
        routing_key=routing_key,
        delivery_id=delivery_id,
        event=headers.get("x-event-type") or "default",
        action=None,
        signature_header_name=source.header if signed else None,
        signature_header=headers.get(source.header or "") if signed else None,
        client_ip=request.client.host if request.client else None,
        headers=forwarded,
        body=body,
        request_id=str(uuid.uuid4()),
    )
    return ack_response(await hub.deliver(delivery), delivery_id)
