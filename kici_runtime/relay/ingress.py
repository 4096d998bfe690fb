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
from collections.abc import Mapping
from dataclasses import dataclass

from kici_adapters.relay import routing
from kici_core.jsontypes import JSONValue
from kici_runtime.relay import verify
from kici_runtime.relay.hub import AckOutcome, Delivery, RelayHub

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

_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, body and the headers besides ``content-length``."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = (_JSON,)


def json_reply(status: int, value: JSONValue, *extra: tuple[bytes, bytes]) -> Reply:
    """A JSON answer."""
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), (_JSON, *extra))


TOO_LARGE = Reply(413, b"Payload Too Large", ((b"content-type", b"text/plain; charset=utf-8"),))


def _rejected(status: int, reason: str) -> Reply:
    return json_reply(status, {"rejected": True, "reason": reason})


def ack_response(outcome: AckOutcome | None, delivery_id: str) -> Reply:
    """Map an ack (or its absence) to the HTTP answer the webhook sender gets."""
    if outcome is None:
        return json_reply(503, {"error": "No orchestrator available"}, (b"retry-after", b"5"))
    status = ACK_STATUS.get(outcome.result, 500)
    if status == 200:
        return json_reply(200, {"accepted": True, "deliveryId": delivery_id})
    body: dict[str, JSONValue] = {"rejected": True, "result": outcome.result, "reason": outcome.reason}
    return json_reply(status, body)


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


async def github_webhook(
    hub: RelayHub, org: str, headers: Mapping[str, str], body: bytes, client_ip: str | None
) -> Reply:
    """``POST /webhook/{org}/github``: a GitHub App delivery (``headers`` keys are lower-case)."""
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
        client_ip=client_ip,
        headers=forwarded,
        body=body,
        request_id=str(uuid.uuid4()),
    )
    return ack_response(await hub.deliver(delivery), delivery_id)


async def generic_webhook(
    hub: RelayHub, org: str, source_id: str, headers: Mapping[str, str], body: bytes, client_ip: str | None
) -> Reply:
    """``POST /webhook/{org}/generic/{source_id}``: a generic webhook (``headers`` keys are lower-case)."""
    routing_key = routing.generic_key(org, source_id)
    source = hub.store.get_source(routing_key)
    if source is None or source.org != org or hub.negatively_cached(org, routing_key):
        return _rejected(404, "Unknown source")
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
        client_ip=client_ip,
        headers=forwarded,
        body=body,
        request_id=str(uuid.uuid4()),
    )
    return ack_response(await hub.deliver(delivery), delivery_id)
