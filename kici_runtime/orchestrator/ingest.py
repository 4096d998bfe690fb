"""What the direct webhook routes and the Platform relay share: source secrets, durable acceptance, and the
verification of relayed deliveries (webhooks spec §8, platform spec §2.5).

A relayed delivery is verified here exactly like a direct one (same secrets, same signature rules), accepted
durably through ``DeliveryInbox.accept`` with ``source="relay"``, and only then acknowledged ``accepted``
(decision 2). Relayed and direct copies of one GitHub delivery share the dedup key ``(org_id, X-GitHub-Delivery)``
so whichever arrives first wins and the other is a duplicate (decision 3).
"""

from __future__ import annotations

import json
import logging
import weakref

import anyio

from kici_adapters import metrics
from kici_adapters.platform.client import AckDecision
from kici_adapters.platform.protocol import RelayedDelivery
from kici_core import dedup, errors, jsontypes, webhooks
from kici_core.jsontypes import JSONValue
from kici_core.ports import Delivery, GenericSource, GitHubSource, SecretStore
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.webhooks")

SYSTEM_ORG = "__system__"
DEFAULT_ORG = "__default__"
GITHUB_SECRET_KEYS = ("webhookSecret", "webhookSecretPrevious")


async def github_secrets(secrets: SecretStore, source: GitHubSource) -> list[str]:
    """Every webhook secret of a GitHub source (current, then the one being rotated out); may be empty.

    Raises:
        SecretDecryptError: the master key cannot decrypt them.
        StorageUnavailable: the secret store is unreachable.
    """
    scope = f"__source__/{source.id}"
    values = [await shared_get(secrets, SYSTEM_ORG, scope, key) for key in GITHUB_SECRET_KEYS]
    return [v for v in values if v]


class _Read:
    __slots__ = ("done", "error", "finished", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.finished = False
        self.value: str | None = None
        self.error: Exception | None = None


_READS: weakref.WeakKeyDictionary[SecretStore, dict[tuple[str, str, str], _Read]] = weakref.WeakKeyDictionary()


async def shared_get(secrets: SecretStore, org_id: str, scope: str, key: str) -> str | None:
    """``secrets.get(org_id, scope, key)``, sharing one read among concurrent callers.

    When a store's short cache expires under load every request in flight would otherwise miss at once and
    issue its own query; here the first caller reads and the others wait for its answer (or its error). A
    caller whose leader was cancelled reads for itself.
    """
    reads = _READS.setdefault(secrets, {})
    ident = (org_id, scope, key)
    while (read := reads.get(ident)) is not None:
        await read.done.wait()
        if read.error is not None:
            raise read.error
        if read.finished:
            return read.value
    read = reads[ident] = _Read()
    try:
        read.value = await secrets.get(org_id, scope, key)
        read.finished = True
        return read.value
    except Exception as exc:
        read.error = exc
        raise
    finally:
        del reads[ident]
        read.done.set()


async def generic_secret(secrets: SecretStore, source: GenericSource) -> str | None:
    """The secret of a generic source for its verification method (None when the method needs none or none
    is stored). Raises like :func:`github_secrets`."""
    name = webhooks.SECRET_METHODS.get(source.verification_method)
    if name is None:
        return None
    return await shared_get(secrets, SYSTEM_ORG, f"__webhook__/{source.id}", name)


async def accept(ctx: AppContext, delivery: Delivery) -> bool:
    """Durably accept ``delivery``; True when it was a duplicate (counted in ``kici_dedup_hits_total``).
    Wakes the delivery worker after a new acceptance. Raises ``Unavailable`` when storage is down."""
    result = await ctx.inbox.accept(delivery)
    if result.duplicate:
        metrics.dedup_hits.inc()
        log.info("Duplicate webhook", extra={"deliveryId": delivery.delivery_id, "event": delivery.event,
                                             "source": delivery.source})
        return True
    ctx.wake_worker()
    return False


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


def relayed_payload(body: bytes, content_type: str | None, *, github: bool) -> bytes:
    """The payload bytes to store, per spec §8.6: JSON bodies verbatim (empty → ``{}``), GitHub form bodies
    through their ``payload`` field, anything else as ``{"rawBody", "contentType"}``.

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
        return json.dumps(webhooks.github_body_json(body, ctype), separators=(",", ":")).encode()
    wrapped: dict[str, JSONValue] = {"rawBody": body.decode("utf-8", errors="replace"), "contentType": ctype}
    return json.dumps(wrapped, separators=(",", ":")).encode()


def _reject(result: str, reason: str) -> AckDecision:
    if result == "rejected_signature":
        return AckDecision(result="rejected_signature", reason=reason)
    if result == "rejected_unknown_source":
        return AckDecision(result="rejected_unknown_source", reason=reason)
    return AckDecision(result="rejected_misconfigured", reason=reason)


async def accept_relayed(ctx: AppContext, delivery: RelayedDelivery, platform_org: str | None) -> AckDecision:
    """Verify a reassembled relayed delivery by its routing-key prefix, accept it durably, and say how to ack.

    Never raises: any unexpected error becomes ``rejected_misconfigured`` (the Platform answers 500). Reasons
    never contain secret material.
    """
    try:
        return await _accept_relayed(ctx, delivery, platform_org)
    except errors.Unavailable:
        log.warning("relayed webhook not accepted: storage unavailable",
                    extra={"deliveryId": delivery.start.delivery_id})
        return _reject("rejected_misconfigured", "orchestrator storage unavailable")
    except Exception:
        log.exception("relayed webhook verification failed", extra={"deliveryId": delivery.start.delivery_id})
        return _reject("rejected_misconfigured", "orchestrator threw during verify+process")


async def _accept_relayed(ctx: AppContext, delivery: RelayedDelivery, platform_org: str | None) -> AckDecision:
    start = delivery.start
    body = delivery.body
    provider, _, _ = start.routing_key.partition(":")
    if provider == "github":
        source = await ctx.sources.github_by_routing_key(start.routing_key)
        if source is None:
            return _reject("rejected_unknown_source", "no source row for routing key")
        try:
            secrets = await github_secrets(ctx.secrets, source)
        except errors.SecretDecryptError:
            return _reject("rejected_misconfigured", "cannot decrypt the webhook secret of the source")
        if not secrets:
            return _reject("rejected_misconfigured", "no webhook secret stored for source")
        header_name = start.signature_header_name or "x-hub-signature-256"
        signature = start.signature_header or start.headers.get(header_name.lower())
        if not signature:
            return _reject("rejected_signature", f"missing signature header {header_name}")
        if not webhooks.verify_any_github_signature(secrets, body, signature):
            metrics.webhooks_received.labels(source="relay", event="unknown").inc()
            return _reject("rejected_signature", f"no rotation secret matched {header_name}")
        org_id = github_org(source, platform_org)
        delivery_id = start.delivery_id
        kind = "github"
    elif provider == "generic":
        found = await ctx.sources.generic_by_id(start.routing_key.rsplit(":", 1)[-1])
        if found is None or found.routing_key != start.routing_key or found.deleted_at is not None \
                or not found.enabled or (found.provider_type == "local" and not ctx.local_sources_enabled):
            return _reject("rejected_unknown_source", "no enabled generic source for routing key")
        method = found.verification_method
        if method not in webhooks.GENERIC_METHODS:
            return _reject("rejected_misconfigured", f"unknown verification method {method}")
        try:
            secret = await generic_secret(ctx.secrets, found)
        except errors.SecretDecryptError:
            return _reject("rejected_misconfigured", "cannot decrypt the secret of the source")
        if method in webhooks.SECRET_METHODS and secret is None:
            return _reject("rejected_misconfigured", "no secret stored for source")
        if not webhooks.verify_generic(method, found.verification_config, secret, start.headers, body,
                                       start.client_ip):
            metrics.webhooks_received.labels(source="relay", event="unknown").inc()
            return _reject("rejected_signature", f"{method} verification failed")
        org_id = found.org_id
        prefix = f"{found.routing_key}:"
        # one key shape for both paths (spec §5): direct generic keys are "<routingKey>:<raw>"
        delivery_id = start.delivery_id if start.delivery_id.startswith(prefix) else prefix + start.delivery_id
        kind = found.provider_type
    else:
        return _reject("rejected_unknown_source", "provider not implemented for routing key prefix")

    try:
        stored = relayed_payload(body, start.headers.get("content-type"), github=kind == "github")
    except (ValueError, UnicodeDecodeError):
        return _reject("rejected_misconfigured", "webhook body is not valid JSON")
    try:
        key = dedup.relay_dedup_key(org_id, delivery_id)
    except errors.InvalidInput as exc:
        return _reject("rejected_misconfigured", exc.message)
    metrics.webhooks_received.labels(source="relay", event=start.event).inc()
    duplicate = await accept(ctx, Delivery(
        org_id=key.org_id, delivery_id=key.delivery_id, routing_key=start.routing_key, event=start.event,
        action=start.action, source="relay", provider=kind, body=stored, received_at=ctx.clock.now(),
    ))
    if not duplicate:
        log.info("Relayed webhook accepted", extra={"deliveryId": key.delivery_id, "event": start.event,
                                                    "routingKey": start.routing_key})
    return AckDecision(result="accepted", duplicate=duplicate)
