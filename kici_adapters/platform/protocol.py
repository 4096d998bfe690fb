"""The orchestrator side of the Platform protocol without sockets: backoff, inbound frames and their
reassembly, source diffs (the frames it sends are built in ``messages.py``).

Everything here is deterministic: time, randomness and ids are arguments, so the state machine in
``client.py`` stays a thin driver and these rules are tested on their own.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kici_core.jsontypes import JSONObject, JSONValue

PROTOCOL_VERSION = 1
WS_MAX_PAYLOAD_BYTES = 26_214_400
"""25 MiB: the largest inbound frame and the largest relayed body."""
REASSEMBLY_TTL_SECONDS = 30.0
HEARTBEAT_INTERVAL_SECONDS = 30.0
AUTH_TIMEOUT_SECONDS = 30.0
BASE_DELAY_MS = 1000.0
MAX_DELAY_MS = 60_000.0

AckResult = Literal["accepted", "rejected_signature", "rejected_unknown_source", "rejected_misconfigured"]


def reconnect_delay(attempts: int, jitter: float, *, max_delay_ms: float = MAX_DELAY_MS) -> float:
    """Seconds to wait before reconnect attempt ``attempts`` (0-based): ``min(1000 × 1.5^n × (1 + U/2), cap)``.

    Args:
        attempts: reconnects since the last ``auth.success``.
        jitter: ``U``, uniform in [0, 1).
        max_delay_ms: the cap (60 s).
    """
    exponent = min(attempts, 64)  # 1.5^64 is far past any cap; avoids float overflow for huge counts
    return min(BASE_DELAY_MS * 1.5**exponent * (1 + jitter * 0.5), max_delay_ms) / 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformSource:
    """One entry of ``source.register.sources``."""

    provider: str  # github | generic
    routing_key: str
    name: str
    subtype: str  # github_app | generic_webhook | local
    slug: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDiff:
    """What to tell the Platform after the source list changed."""

    removed: tuple[str, ...] = ()
    changed: tuple[PlatformSource, ...] = ()
    send_empty_register: bool = False

    @property
    def empty(self) -> bool:
        return not (self.removed or self.changed or self.send_empty_register)


def diff_sources(old: Sequence[PlatformSource], new: Sequence[PlatformSource]) -> SourceDiff:
    """Deregister removed keys; register added keys and keys whose provider/name/subtype/slug changed; when the
    list became empty, an empty ``source.register`` (spec §2.4, runtime source changes)."""
    before = {s.routing_key: s for s in old}
    after = {s.routing_key: s for s in new}
    removed = tuple(sorted(k for k in before if k not in after))
    changed = tuple(s for k, s in sorted(after.items()) if before.get(k) != s)
    return SourceDiff(removed=removed, changed=changed, send_empty_register=not after and bool(before))


def parse_frame(text: str | bytes) -> JSONObject | None:
    """A JSON object with a string ``type``, or None (the frame is then ignored, never fatal)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return value


# --------------------------------------------------------------------------------------------- reassembly
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayStart:
    """The metadata of a ``webhook.relay.start``."""

    message_id: str
    routing_key: str
    delivery_id: str
    event: str
    action: str | None
    signature_header_name: str | None
    signature_header: str | None
    client_ip: str | None
    headers: dict[str, str]
    total_size: int
    chunk_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayedDelivery:
    """A completely reassembled relayed webhook, ready for verification."""

    start: RelayStart
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """A stream error: answer ``webhook.ack`` ``rejected_misconfigured`` with these ids."""

    message_id: str
    delivery_id: str
    reason: str


@dataclass(slots=True)
class _Entry:
    start: RelayStart
    expires: float
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


def _opt_str(frame: Mapping[str, JSONValue], key: str) -> str | None:
    value = frame.get(key)
    return value if isinstance(value, str) else None


def _int(value: JSONValue) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Reassembly:
    """Per-``messageId`` buffers of chunked relays (spec §2.5): strictly ordered chunks, 25 MiB cap, TTL."""

    def __init__(self, *, ttl: float = REASSEMBLY_TTL_SECONDS, max_bytes: int = WS_MAX_PAYLOAD_BYTES) -> None:
        self._ttl = ttl
        self._max = max_bytes
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every buffer (disconnect or shutdown)."""
        self._entries.clear()

    def expire(self, now: float) -> int:
        """Silently drop buffers older than the TTL; returns how many."""
        dead = [k for k, e in self._entries.items() if e.expires <= now]
        for key in dead:
            del self._entries[key]
        return len(dead)

    def start(self, frame: Mapping[str, JSONValue], now: float) -> Reject | None:
        """Open a buffer for a ``webhook.relay.start``; a Reject when it is invalid or a duplicate."""
        self.expire(now)
        message_id = _opt_str(frame, "messageId") or ""
        delivery_id = _opt_str(frame, "deliveryId") or message_id
        if not message_id:
            return Reject(message_id="", delivery_id=delivery_id, reason="webhook.relay.start without messageId")
        if message_id in self._entries:
            return Reject(message_id=message_id, delivery_id=delivery_id, reason="duplicate webhook.relay.start")
        total = _int(frame.get("totalSize"))
        count = _int(frame.get("chunkCount"))
        if total is None or total < 0 or total > self._max:
            return Reject(message_id=message_id, delivery_id=delivery_id, reason="totalSize out of range")
        if count is None or count < 1:
            return Reject(message_id=message_id, delivery_id=delivery_id, reason="chunkCount must be at least 1")
        routing_key = _opt_str(frame, "routingKey")
        event = _opt_str(frame, "event")
        raw_headers = frame.get("headers")
        if not routing_key or not event or not _opt_str(frame, "deliveryId") or not isinstance(raw_headers, dict):
            return Reject(
                message_id=message_id, delivery_id=delivery_id, reason="webhook.relay.start is missing required fields"
            )
        headers = {str(k).lower(): v for k, v in raw_headers.items() if isinstance(v, str)}
        self._entries[message_id] = _Entry(
            start=RelayStart(
                message_id=message_id,
                routing_key=routing_key,
                delivery_id=delivery_id,
                event=event,
                action=_opt_str(frame, "action"),
                signature_header_name=_opt_str(frame, "signatureHeaderName"),
                signature_header=_opt_str(frame, "signatureHeader"),
                client_ip=_opt_str(frame, "clientIp"),
                headers=headers,
                total_size=total,
                chunk_count=count,
            ),
            expires=now + self._ttl,
        )
        return None

    def chunk(self, frame: Mapping[str, JSONValue], now: float) -> RelayedDelivery | Reject | None:
        """Add a ``webhook.relay.chunk``: the delivery when complete, a Reject on any stream error (the buffer
        is dropped; ``deliveryId`` of the ack is the ``messageId``), else None (more chunks to come)."""
        self.expire(now)
        message_id = _opt_str(frame, "messageId") or ""
        entry = self._entries.get(message_id)

        def reject(reason: str) -> Reject:
            self._entries.pop(message_id, None)
            return Reject(message_id=message_id, delivery_id=message_id, reason=reason)

        if entry is None:
            return reject("chunk for an unknown or expired relay stream")
        sequence = _int(frame.get("sequence"))
        if sequence is None or sequence != len(entry.parts):
            return reject("chunk out of order")
        if sequence >= entry.start.chunk_count:
            return reject("more chunks than chunkCount")
        data = frame.get("data")
        if not isinstance(data, str):
            return reject("chunk data is not base64 text")
        try:
            piece = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return reject("chunk data is not valid base64")
        entry.size += len(piece)
        if entry.size > self._max or entry.size > entry.start.total_size:
            return reject("relayed body larger than announced")
        entry.parts.append(piece)
        if frame.get("final") is not True:
            return None
        if len(entry.parts) != entry.start.chunk_count:
            return reject("final chunk before chunkCount chunks")
        if entry.size != entry.start.total_size:
            return reject("relayed body smaller than announced")
        del self._entries[message_id]
        return RelayedDelivery(start=entry.start, body=b"".join(entry.parts))
