"""The accept use case: one flow for direct webhook routes and deliveries relayed by the Platform.

:func:`accept_delivery` takes an :class:`Incoming` (what an entry point parsed from an HTTP request or a
reassembled ``webhook.relay.*`` stream) and returns what happened to it: :class:`Accepted` (durably stored, or a
duplicate of a stored one), :class:`Filtered` (verified but not wanted by the source) or :class:`Rejected` (with
a code the entry point maps to its answer: an HTTP status or a ``webhook.ack`` result). The steps, for both
ways in (webhooks spec §2, §5; platform spec §2.5, §5):

1. find the source (GitHub App by routing key, generic source by URL or routing key);
2. read its secrets and verify the signature over the raw body (every rotation secret of a GitHub App);
3. (direct generic deliveries only) the per-source size cap and rate limit: the relay has applied its own;
4. normalise the payload to the JSON bytes to store and derive event, action, org and dedup key. The rules of
   the two ways differ where the spec says so: a relayed body is decoded per spec §2.5 step 3 (its content
   type defaults to ``application/octet-stream``; other bodies are wrapped as ``{"rawBody", "contentType"}``),
   a direct one per §2.1/§2.5 of the webhooks spec;
5. claim ``(org_id, delivery_id)`` and store the delivery in one transaction (``DeliveryInbox.accept``):
   relayed and direct copies of one delivery share the key, whichever arrives first wins (decision 3).

Storage outages raise ``Unavailable`` (the caller answers 503 or ``rejected_misconfigured``); no other error
is raised for bad input. Rejection texts never contain secret material.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from kici_core import dedup, errors, events, jsontypes, webhooks
from kici_core.delivery_records import Delivery
from kici_core.jsontypes import JSONValue
from kici_core.ports import Clock, DeliveryInbox, SecretStore, SourceStore
from kici_core.ratelimit import SlidingWindowLimiter
from kici_core.source_records import GenericSource, GitHubSource

SYSTEM_ORG = "__system__"
"""Org of the scoped secrets that hold webhook secrets."""
DEFAULT_ORG = "__default__"
"""``customer_id`` of a GitHub source that serves every org."""
GITHUB_SECRET_KEYS = ("webhookSecret", "webhookSecretPrevious")
"""A GitHub source's webhook secrets: the current one, then the one being rotated out."""

Via = Literal["direct", "relay"]
RejectCode = Literal["bad_request", "unknown_source", "bad_signature", "misconfigured", "too_large", "rate_limited"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    """One delivery as an entry point received it, before verification.

    Direct GitHub: ``routing_key`` ``github:<target id>``, ``org_id`` from the URL, ``event`` and
    ``delivery_id`` from the ``X-GitHub-*`` headers. Direct generic: ``org_id`` and ``source_name`` from the URL.
    Relayed: ``routing_key``, ``delivery_id``, ``event``, ``action`` from ``webhook.relay.start`` and
    ``platform_org`` from the link's ``auth.success``.
    """

    via: Via
    headers: Mapping[str, str]
    """Lower-cased header names."""
    body: bytes
    """The raw body bytes, as signed."""
    routing_key: str | None = None
    org_id: str | None = None
    source_name: str | None = None
    platform_org: str | None = None
    event: str | None = None
    delivery_id: str | None = None
    action: str | None = None
    signature: str | None = None
    """The claimed GitHub signature (``sha256=…``), None when absent."""
    signature_header: str = "x-hub-signature-256"
    """Where ``signature`` came from (named in rejections)."""
    client_ip: str | None = None

    @property
    def provider(self) -> str:
        """``github`` or ``generic`` (direct generic requests carry no routing key), else the routing key's
        prefix (rejected as unknown)."""
        if self.routing_key is None:
            return "generic"
        return self.routing_key.partition(":")[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """Durably stored (``duplicate``: an earlier copy was, and nothing was written)."""

    delivery_id: str
    event: str
    routing_key: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Filtered:
    """Verified, but the source does not take this event (answered 200, nothing stored)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """Not accepted. ``reason`` is the short answer a direct sender gets; ``detail`` a more precise, secret-free
    diagnostic (the relay's ``webhook.ack`` reason, logs)."""

    code: RejectCode
    reason: str
    detail: str
    max_bytes: int | None = None
    """``too_large``: the source's cap."""
    retry_after: float | None = None
    """``rate_limited``: seconds until the source's window has room."""
    routing_key: str | None = None
    """The source's routing key, when it was found."""


Outcome = Accepted | Filtered | Rejected


class IntakeObserver(Protocol):
    """Metrics and log hooks (the runtime binds them to Prometheus and its logger)."""

    def received(self, path: str, event: str) -> None:
        """A delivery passed (``event``) or failed (``"unknown"``) verification; ``path`` is ``direct`` (GitHub),
        ``generic`` (direct generic) or ``relay``."""

    def duplicate(self, delivery: Delivery) -> None:
        """``delivery`` was a duplicate (``kici_dedup_hits_total``)."""

    def local_refused(self, routing_key: str) -> None:
        """A delivery for a ``local`` source arrived while local sources are disabled."""


class _NoObserver:
    def received(self, path: str, event: str) -> None:
        return None

    def duplicate(self, delivery: Delivery) -> None:
        return None

    def local_refused(self, routing_key: str) -> None:
        return None


@dataclass(slots=True, kw_only=True)
class Intake:
    """The ports and settings of :func:`accept_delivery`."""

    sources: SourceStore
    secrets: SecretStore
    inbox: DeliveryInbox
    clock: Clock
    ids: Callable[[], str]
    """Fallback delivery ids of generic deliveries that carry none (such deliveries never dedup)."""
    observer: IntakeObserver = field(default_factory=_NoObserver)
    limiter: SlidingWindowLimiter = field(default_factory=SlidingWindowLimiter)
    """Per-source rate limit of verified direct generic deliveries (``rate_limit_rpm``)."""
    local_sources_enabled: bool = False


# --------------------------------------------------------------------------------------------- secrets
async def github_secrets(secrets: SecretStore, source: GitHubSource) -> list[str]:
    """Every webhook secret of a GitHub source (current, then the one being rotated out); may be empty.

    Raises:
        SecretDecryptError: the master key cannot decrypt them.
        StorageUnavailable: the secret store is unreachable.
    """
    scope = f"__source__/{source.id}"
    values = [await secrets.get(SYSTEM_ORG, scope, key) for key in GITHUB_SECRET_KEYS]
    return [v for v in values if v]


async def generic_secret(secrets: SecretStore, source: GenericSource) -> str | None:
    """The secret of a generic source for its verification method (None when the method needs none or none
    is stored). Raises like :func:`github_secrets`."""
    name = webhooks.SECRET_METHODS.get(source.verification_method)
    if name is None:
        return None
    return await secrets.get(SYSTEM_ORG, f"__webhook__/{source.id}", name)


# --------------------------------------------------------------------------------------------- payloads
def relayed_payload(body: bytes, content_type: str | None, *, github: bool) -> bytes:
    """The payload bytes to store for a relayed body (platform spec §2.5 step 3): JSON bodies verbatim (empty →
    ``{}``), GitHub form bodies through their ``payload`` field, anything else as ``{"rawBody", "contentType"}``.

    Raises:
        ValueError: a JSON (or GitHub form) body that does not parse.
    """
    ctype = "application/octet-stream" if content_type is None else content_type
    if "application/json" in ctype or ctype == "":
        if not body.strip():
            return b"{}"
        jsontypes.loads(body)  # strict and depth-bounded, like the direct routes
        return body
    if github and ctype.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return _dumps(webhooks.github_body_json(body, ctype))
    wrapped: dict[str, JSONValue] = {"rawBody": body.decode("utf-8", errors="replace"), "contentType": ctype}
    return _dumps(wrapped)


def _dumps(value: JSONValue) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _org_ok(org_id: str | None) -> bool:
    if not org_id:
        return False
    try:
        dedup.DedupKey(org_id=org_id, delivery_id="x")
    except errors.InvalidInput:
        return False
    return True


def github_org(source: GitHubSource, platform_org: str | None) -> str:
    """The org a relayed GitHub delivery is recorded under: the source's ``customer_id``, else (for sources
    left at ``__default__``) the Platform org of the connection, so relayed and direct copies meet."""
    if source.customer_id != DEFAULT_ORG and _org_ok(source.customer_id):
        return source.customer_id
    return platform_org if platform_org is not None and _org_ok(platform_org) else DEFAULT_ORG


def _action(payload: Mapping[str, JSONValue]) -> str | None:
    action = payload.get("action")
    return action if isinstance(action, str) else None


# --------------------------------------------------------------------------------------------- rejections
def _bad_request(reason: str, detail: str | None = None) -> Rejected:
    return Rejected(code="bad_request", reason=reason, detail=detail or reason)


def _misconfigured(detail: str, routing_key: str | None = None) -> Rejected:
    return Rejected(
        code="misconfigured",
        reason="Source verification misconfigured",
        detail=detail,
        routing_key=routing_key,
    )


def _bad_signature(detail: str, routing_key: str | None) -> Rejected:
    return Rejected(code="bad_signature", reason="Invalid signature", detail=detail, routing_key=routing_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Normalised:
    """What step 4 derives: the delivery to store under its dedup key."""

    key: dedup.DedupKey
    event: str
    action: str | None
    body: bytes


# --------------------------------------------------------------------------------------------- the use case
async def accept_delivery(request: Incoming, intake: Intake) -> Outcome:
    """Verify, normalise, deduplicate and durably record one delivery (see the module docstring).

    Raises:
        Unavailable: the source, secret or inbox storage cannot be reached; nothing was acknowledged.
    """
    if request.provider == "github":
        return await _github(request, intake)
    if request.provider == "generic":
        return await _generic(request, intake)
    return Rejected(
        code="unknown_source",
        reason="Unknown source",
        detail="provider not implemented for routing key prefix",
    )


async def _record(
    request: Incoming,
    intake: Intake,
    norm: _Normalised | Rejected,
    *,
    routing_key: str,
    provider: str,
    path: str,
) -> Outcome:
    if isinstance(norm, Rejected):
        return norm
    key = norm.key
    intake.observer.received(path, norm.event)
    delivery = Delivery(
        org_id=key.org_id,
        delivery_id=key.delivery_id,
        routing_key=routing_key,
        event=norm.event,
        action=norm.action,
        source=request.via,
        provider=provider,
        body=norm.body,
        received_at=intake.clock.now(),
    )
    result = await intake.inbox.accept(delivery)
    if result.duplicate:
        intake.observer.duplicate(delivery)
    return Accepted(delivery_id=key.delivery_id, event=norm.event, routing_key=routing_key, duplicate=result.duplicate)


async def _github(request: Incoming, intake: Intake) -> Outcome:
    routing_key = request.routing_key or ""
    source = await intake.sources.github_by_routing_key(routing_key)
    if source is None or (request.via == "direct" and source.customer_id not in (request.org_id, DEFAULT_ORG)):
        return Rejected(code="unknown_source", reason="Unknown organization", detail="no source row for routing key")
    try:
        secrets = await github_secrets(intake.secrets, source)
    except errors.SecretDecryptError:
        return _misconfigured("cannot decrypt the webhook secret of the source", source.routing_key)
    if not secrets:
        return _misconfigured("no webhook secret stored for source", source.routing_key)
    path = "relay" if request.via == "relay" else "direct"
    if not request.signature:
        intake.observer.received(path, "unknown")
        return _bad_signature(f"missing signature header {request.signature_header}", source.routing_key)
    if not webhooks.verify_any_github_signature(secrets, request.body, request.signature):
        intake.observer.received(path, "unknown")
        return _bad_signature(f"no rotation secret matched {request.signature_header}", source.routing_key)
    norm = _github_relayed(request, source) if request.via == "relay" else _github_direct(request)
    return await _record(request, intake, norm, routing_key=source.routing_key, provider="github", path=path)


def _github_direct(request: Incoming) -> _Normalised | Rejected:
    content_type = request.headers.get("content-type")
    try:
        payload = webhooks.github_body_json(request.body, content_type)
    except jsontypes.JSONTooDeep as exc:
        return _bad_request(f"Invalid payload: {exc}")
    except ValueError:  # UnicodeDecodeError included
        return _bad_request("Invalid payload")
    if not isinstance(payload, dict):
        return _bad_request("Invalid payload")
    try:
        # the raw X-GitHub-Delivery, the same key a relayed copy gets (decision 3)
        key = dedup.DedupKey(org_id=request.org_id or "", delivery_id=request.delivery_id or "")
    except errors.InvalidInput as exc:
        return _bad_request(exc.message)
    json_body = (content_type or "application/json").startswith("application/json")
    return _Normalised(
        key=key,
        event=request.event or "",
        action=_action(payload),
        body=request.body if json_body else _dumps(payload),
    )


def _github_relayed(request: Incoming, source: GitHubSource) -> _Normalised | Rejected:
    try:
        stored = relayed_payload(request.body, request.headers.get("content-type"), github=True)
    except ValueError:  # UnicodeDecodeError and JSONTooDeep included
        return _bad_request("Invalid payload", "webhook body is not valid JSON")
    try:
        key = dedup.relay_dedup_key(github_org(source, request.platform_org), request.delivery_id or "")
    except errors.InvalidInput as exc:
        return _bad_request(exc.message)
    return _Normalised(
        key=key,
        event=request.event or "",
        action=request.action,
        body=stored,
    )


async def _generic_source(request: Incoming, intake: Intake) -> GenericSource | None:
    if request.via == "direct":
        found = await intake.sources.generic_by_org_and_name(request.org_id or "", request.source_name or "")
    else:
        routing_key = request.routing_key or ""
        found = await intake.sources.generic_by_id(routing_key.rsplit(":", 1)[-1])
        if found is not None and (found.routing_key != routing_key or found.deleted_at is not None):
            found = None
    if found is not None and found.provider_type == "local" and not intake.local_sources_enabled:
        intake.observer.local_refused(found.routing_key)
        return None
    return found if found is not None and found.enabled else None


async def _generic(request: Incoming, intake: Intake) -> Outcome:
    source = await _generic_source(request, intake)
    if source is None:
        return Rejected(
            code="unknown_source", reason="Unknown source", detail="no enabled generic source for routing key"
        )
    if request.via == "direct" and len(request.body) > source.max_payload_bytes:
        return Rejected(
            code="too_large",
            reason="Payload too large",
            detail="body over the source's cap",
            max_bytes=source.max_payload_bytes,
            routing_key=source.routing_key,
        )
    method = source.verification_method
    if method not in webhooks.GENERIC_METHODS:
        return _misconfigured(f"unknown verification method {method}", source.routing_key)
    try:
        secret = await generic_secret(intake.secrets, source)
    except errors.SecretDecryptError:
        return _misconfigured("cannot decrypt the secret of the source", source.routing_key)
    if method in webhooks.SECRET_METHODS and secret is None:
        return _misconfigured("no secret stored for source", source.routing_key)
    path = "relay" if request.via == "relay" else "generic"
    if not webhooks.verify_generic(
        method, source.verification_config, secret, request.headers, request.body, request.client_ip
    ):
        intake.observer.received(path, "unknown")
        return _bad_signature(f"{method} verification failed", source.routing_key)
    if request.via == "relay":
        norm: _Normalised | Rejected = _generic_relayed(request, source)
    else:
        # only verified direct deliveries count against the source's limit (the relay has its own)
        wait = intake.limiter.hit(source.id, source.rate_limit_rpm, intake.clock.monotonic())
        if wait is not None:
            return Rejected(
                code="rate_limited",
                reason="Rate limit exceeded",
                detail="source rate limit exceeded",
                retry_after=wait,
                routing_key=source.routing_key,
            )
        direct = _generic_direct(request, source, intake)
        if isinstance(direct, Filtered):
            return direct
        norm = direct
    return await _record(
        request, intake, norm, routing_key=source.routing_key, provider=source.provider_type, path=path
    )


def _generic_relayed(request: Incoming, source: GenericSource) -> _Normalised | Rejected:
    try:
        stored = relayed_payload(request.body, request.headers.get("content-type"), github=False)
    except ValueError:
        return _bad_request("Invalid payload", "webhook body is not valid JSON")
    # one key shape for both ways (platform spec §5): direct generic keys are "<routingKey>:<raw>"
    prefix = f"{source.routing_key}:"
    raw = request.delivery_id or ""
    try:
        key = dedup.relay_dedup_key(source.org_id, raw if raw.startswith(prefix) else prefix + raw)
    except errors.InvalidInput as exc:
        return _bad_request(exc.message)
    return _Normalised(
        key=key,
        event=request.event or "",
        action=request.action,
        body=stored,
    )


def _generic_direct(request: Incoming, source: GenericSource, intake: Intake) -> _Normalised | Rejected | Filtered:
    headers = request.headers
    payload: dict[str, JSONValue]
    if source.provider_type == "local":
        try:
            value = jsontypes.loads(request.body)
        except jsontypes.JSONTooDeep as exc:
            return _bad_request(f"Invalid payload: {exc}")
        except ValueError:
            return _bad_request("Local source requires JSON body")
        if not isinstance(value, dict):
            return _bad_request("Local source requires JSON body")
        payload = value
        event = headers.get("x-event-type", "").strip()
        if not event:
            return _bad_request("Missing x-event-type header for local source")
        action = _action(payload)
    else:
        try:
            payload = events.parse_generic_body(request.body, headers.get("content-type"))
        except jsontypes.JSONTooDeep as exc:
            return _bad_request(f"Invalid payload: {exc}")
        event = events.generic_event_type(
            payload,
            headers,
            event_type_header=source.event_type_header,
            event_type_path=source.event_type_path,
        )
        action = None if event == "default" else event
        if source.allowed_events and event not in source.allowed_events:
            return Filtered(reason=f"Event '{event}' not in allowed list")
    try:
        key = dedup.generic_dedup_key(
            org_id=request.org_id or "",
            routing_key=source.routing_key,
            headers=headers,
            fallback_id=intake.ids(),
            body=payload,
            idempotency_key_header=source.idempotency_key_header,
            idempotency_key_path=source.idempotency_key_path,
            local=source.provider_type == "local",
        )
    except errors.InvalidInput as exc:
        return _bad_request(exc.message)
    return _Normalised(key=key, event=event, action=action, body=_dumps(payload))
