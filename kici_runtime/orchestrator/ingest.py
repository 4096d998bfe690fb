"""What the direct webhook routes and the Platform relay share: the accept use case bound to the app's ports
(``kici_core.accept``), its metrics and logs, shared secret reads, and the relay's ``webhook.ack`` mapping.

Both ways in build a :class:`kici_core.accept.Incoming` and call :func:`accept`; what remains here and in
``webhook_routes.py`` is transport: HTTP statuses and bodies, ``webhook.ack`` results. A delivery is
acknowledged only after it is stored durably (decision 2); relayed and direct copies of one GitHub delivery
share the dedup key ``(org_id, X-GitHub-Delivery)`` (decision 3).
"""

from __future__ import annotations

import logging
import weakref

import anyio

from kici_adapters import metrics
from kici_adapters.platform.client import AckDecision
from kici_adapters.platform.protocol import RelayedDelivery
from kici_core import accept as accepting
from kici_core import errors
from kici_core.delivery_records import Delivery
from kici_core.ports import SecretStore
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.webhooks")


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


class SharedReads:
    """A ``SecretStore`` whose reads go through :func:`shared_get` (writes pass through)."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        return await shared_get(self._store, org_id, scope, key)

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        await self._store.put(org_id, scope, key, value)

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        return await self._store.delete(org_id, scope, key)


class _Observer:
    def received(self, path: str, event: str) -> None:
        metrics.webhooks_received.labels(source=path, event=event).inc()

    def duplicate(self, delivery: Delivery) -> None:
        metrics.dedup_hits.inc()
        log.info(
            "Duplicate webhook",
            extra={"deliveryId": delivery.delivery_id, "event": delivery.event, "source": delivery.source},
        )

    def local_refused(self, routing_key: str) -> None:
        log.warning(
            "delivery for a local source refused: local sources are disabled "
            "(set KICI_DEV=true or KICI_ALLOW_LOCAL_SOURCES=true)",
            extra={"routingKey": routing_key},
        )


_OBSERVER = _Observer()


def intake(ctx: AppContext) -> accepting.Intake:
    """The accept use case's ports and settings from ``ctx``."""
    return accepting.Intake(
        sources=ctx.sources,
        secrets=SharedReads(ctx.secrets),
        inbox=ctx.inbox,
        clock=ctx.clock,
        ids=ctx.ids,
        observer=_OBSERVER,
        limiter=ctx.limiter,
        local_sources_enabled=ctx.local_sources_enabled,
    )


async def accept(ctx: AppContext, request: accepting.Incoming) -> accepting.Outcome:
    """Run the accept use case for ``request``; wakes the delivery worker after a new acceptance and logs the
    outcome. Raises ``Unavailable`` when storage is down."""
    outcome = await accepting.accept_delivery(request, intake(ctx))
    if isinstance(outcome, accepting.Accepted):
        if not outcome.duplicate:
            ctx.wake_worker()
            log.info(
                "Relayed webhook accepted" if request.via == "relay" else "Webhook accepted",
                extra={"deliveryId": outcome.delivery_id, "event": outcome.event, "routingKey": outcome.routing_key},
            )
    elif isinstance(outcome, accepting.Rejected) and outcome.code == "misconfigured":
        log.error(
            "webhook source verification misconfigured",
            extra={"routingKey": outcome.routing_key, "reason": outcome.detail},
        )
    return outcome


def ack_for(outcome: accepting.Outcome) -> AckDecision:
    """The ``webhook.ack`` for an outcome: ``accepted`` (duplicates flagged), ``rejected_unknown_source``,
    ``rejected_signature``, else ``rejected_misconfigured`` (platform spec §2.5); the reason is the outcome's
    secret-free detail."""
    if isinstance(outcome, accepting.Accepted):
        return AckDecision(result="accepted", duplicate=outcome.duplicate)
    if isinstance(outcome, accepting.Filtered):
        return AckDecision(result="accepted")
    if outcome.code == "unknown_source":
        return AckDecision(result="rejected_unknown_source", reason=outcome.detail)
    if outcome.code == "bad_signature":
        return AckDecision(result="rejected_signature", reason=outcome.detail)
    return AckDecision(result="rejected_misconfigured", reason=outcome.detail)


def relayed_request(delivery: RelayedDelivery, platform_org: str | None) -> accepting.Incoming:
    """The use case's input for a reassembled relayed delivery."""
    start = delivery.start
    header_name = start.signature_header_name or "x-hub-signature-256"
    return accepting.Incoming(
        via="relay",
        headers=start.headers,
        body=delivery.body,
        routing_key=start.routing_key,
        platform_org=platform_org,
        event=start.event,
        delivery_id=start.delivery_id,
        action=start.action,
        signature=start.signature_header or start.headers.get(header_name.lower()),
        signature_header=header_name,
        client_ip=start.client_ip,
    )


async def accept_relayed(ctx: AppContext, delivery: RelayedDelivery, platform_org: str | None) -> AckDecision:
    """Verify and accept a reassembled relayed delivery durably, and say how to ack it.

    Never raises: any unexpected error becomes ``rejected_misconfigured`` (the Platform answers 500). Reasons
    never contain secret material.
    """
    try:
        return ack_for(await accept(ctx, relayed_request(delivery, platform_org)))
    except errors.Unavailable:
        log.warning(
            "relayed webhook not accepted: storage unavailable", extra={"deliveryId": delivery.start.delivery_id}
        )
        return AckDecision(result="rejected_misconfigured", reason="orchestrator storage unavailable")
    except Exception:
        log.exception("relayed webhook verification failed", extra={"deliveryId": delivery.start.delivery_id})
        return AckDecision(result="rejected_misconfigured", reason="orchestrator threw during verify+process")
