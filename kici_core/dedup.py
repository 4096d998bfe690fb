"""The dedup key of an inbound delivery: ``(org_id, delivery_id)``.

One key serves both ingress paths. For GitHub, ``delivery_id`` is the raw ``X-GitHub-Delivery``
GUID whether the delivery came straight to us or through the Platform relay, so a delivery seen on
both paths is processed once. Direct generic deliveries use ``<routing_key>:<raw>``, where ``raw``
is the sender's idempotency key or delivery header, else an id the caller generated.

The store claims the key atomically (``INSERT … ON CONFLICT DO NOTHING``); this module only derives
and validates it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kici_core import errors, identifiers, jsonpath, webhooks
from kici_core.jsontypes import JSONValue

__all__ = [
    "DELIVERY_ID_MAX_LEN",
    "ORG_ID_MAX_LEN",
    "DedupKey",
    "fanout_delivery_id",
    "generic_dedup_key",
    "github_dedup_key",
    "relay_dedup_key",
    "universal_git_dedup_key",
]

ORG_ID_MAX_LEN = identifiers.ORG_ID_MAX_LEN
DELIVERY_ID_MAX_LEN = identifiers.DELIVERY_ID_MAX_LEN

GENERIC_HEADER_ORDER = ("x-delivery-id", "x-request-id", "x-idempotency-key")
LOCAL_HEADER_ORDER = ("x-delivery-id", "x-request-id")
UNIVERSAL_GIT_HEADER_ORDER = (
    "x-gitea-delivery",
    "x-gogs-delivery",
    "x-gitlab-event-uuid",
    "x-github-delivery",
    "x-delivery-id",
    "x-request-id",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupKey:
    """The identity of one delivery for an organisation.

    Invariants (checked on construction, :mod:`kici_core.identifiers`): ``org_id`` is 1–16 characters of
    ``[A-Za-z0-9_.:-]`` not starting with ``.`` (it is a segment of object keys); ``delivery_id`` is 1–512
    printable ASCII characters without surrounding whitespace.

    Raises:
        InvalidInput: an invariant does not hold.
    """

    org_id: str
    delivery_id: str

    def __post_init__(self) -> None:
        identifiers.check_org_id(self.org_id)
        identifiers.check_delivery_id(self.delivery_id)


def _first_header(headers: Mapping[str, str], names: Iterable[str]) -> str | None:
    for name in names:
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


def github_dedup_key(org_id: str, headers: Mapping[str, str]) -> DedupKey:
    """Key of a direct GitHub delivery: the raw ``X-GitHub-Delivery`` value (header names are
    matched case-insensitively).

    Raises:
        InvalidInput: the header is missing or empty, or the key is invalid.
    """
    value = _first_header(webhooks.lower_headers(headers), ("x-github-delivery",))
    if value is None:
        raise errors.InvalidInput("missing X-GitHub-Delivery header")
    return DedupKey(org_id=org_id, delivery_id=value)


def relay_dedup_key(org_id: str, delivery_id: str) -> DedupKey:
    """Key of a relayed delivery: ``webhook.relay.start.deliveryId`` exactly as the Platform sent
    it (for GitHub the unprefixed ``X-GitHub-Delivery`` GUID, so it meets the direct path's key).

    Raises:
        InvalidInput: the key is invalid.
    """
    return DedupKey(org_id=org_id, delivery_id=delivery_id)


def _routed_key(org_id: str, routing_key: str, raw: str) -> DedupKey:
    """``<routing_key>:<raw>`` for a direct generic or git-provider delivery."""
    if not routing_key:
        raise errors.InvalidInput("routing key is empty")
    return DedupKey(org_id=org_id, delivery_id=f"{routing_key}:{raw}")


def generic_dedup_key(
    *,
    org_id: str,
    routing_key: str,
    headers: Mapping[str, str],
    fallback_id: str,
    body: JSONValue = None,
    idempotency_key_header: str | None = None,
    idempotency_key_path: str | None = None,
    local: bool = False,
) -> DedupKey:
    """Key of a direct generic (or ``local``) delivery: ``<routing_key>:<raw>``.

    ``raw`` is the first present of: the header named by ``idempotency_key_header``; the string at
    ``idempotency_key_path`` in the JSON ``body``; ``x-idempotency-key``; then the delivery headers
    (generic: ``x-delivery-id``, ``x-request-id``, ``x-idempotency-key``; local: ``x-delivery-id``,
    ``x-request-id``); else ``fallback_id``, which the caller generates (the core makes no ids).

    Raises:
        InvalidInput: ``routing_key`` is empty, or the resulting key is invalid.
    """
    lowered = webhooks.lower_headers(headers)
    raw: str | None = None
    if not local:
        if idempotency_key_header:
            raw = _first_header(lowered, (idempotency_key_header.lower(),))
        if raw is None and idempotency_key_path:
            raw = jsonpath.dot_path(body, idempotency_key_path)
        if raw is None:
            raw = _first_header(lowered, ("x-idempotency-key",))
    if raw is None:
        raw = _first_header(lowered, LOCAL_HEADER_ORDER if local else GENERIC_HEADER_ORDER)
    return _routed_key(org_id, routing_key, raw or fallback_id)


def universal_git_dedup_key(*, org_id: str, routing_key: str, headers: Mapping[str, str], fallback_id: str) -> DedupKey:
    """Key of a direct delivery from a git-provider generic source (Gitea, Gogs, GitLab, GitHub):
    ``<routing_key>:<raw>`` with ``raw`` the first of the provider delivery headers, so provider
    redeliveries are recognised (upstream used a fresh id here).

    Raises:
        InvalidInput: ``routing_key`` is empty, or the resulting key is invalid.
    """
    raw = _first_header(webhooks.lower_headers(headers), UNIVERSAL_GIT_HEADER_ORDER)
    return _routed_key(org_id, routing_key, raw or fallback_id)


def fanout_delivery_id(inbound: DedupKey, registration_id: str) -> DedupKey:
    """Per-registration slot of a cross-source fan-out: ``<inboundDeliveryId>:<registrationId>``.

    Raises:
        InvalidInput: ``registration_id`` is empty, or the resulting key is invalid.
    """
    if not registration_id:
        raise errors.InvalidInput("registration id is empty")
    return DedupKey(org_id=inbound.org_id, delivery_id=f"{inbound.delivery_id}:{registration_id}")
