"""The relay's live state: authenticated orchestrator connections, routing and chunked delivery.

``RelayHub`` is shared by the WebSocket endpoint (which attaches connections and feeds it frames) and the
HTTP ingress (which hands it verified deliveries). Delivery follows the Platform's rules: pick a connection
of the source's org that registered the routing key and had it accepted (least in-flight first), send
``webhook.relay.start`` then every ``webhook.relay.chunk`` in order, wait for the ``webhook.ack`` with the
same ``messageId``; on a missed ack or a dropped socket try the next connection.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from kici_adapters.relay import routing
from kici_adapters.relay.store import ApiKey, RecordedMessage, RelayStore
from kici_core.errors import NotFound
from kici_core.jsontypes import JSONValue
from kici_runtime.relay import schemas

log = logging.getLogger("kici.relay")

WS_MAX_PAYLOAD_BYTES = 26_214_400
WEBHOOK_RELAY_CHUNK_SIZE = 65_536
PROTOCOL_VERSION = 1

ACK_RESULTS = ("accepted", "rejected_signature", "rejected_unknown_source", "rejected_misconfigured")

# Orchestrator → Platform types the relay knows (recorded without an "unknown type" problem).
KNOWN_ORCHESTRATOR_TYPES = frozenset(
    {
        "source.register", "source.deregister", "webhook.ack", *schemas.FORWARDED_TYPES, "state.replay",
        "run.event", "job.context", "cache.stats", "orch.metrics", "orch.capabilities.update",
        "log.response", "join.response",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    """Tunables; the defaults are the Platform's values, tests shorten the timeouts."""

    ack_timeout: float = 5.0
    auth_timeout: float = 5.0
    heartbeat_timeout: float = 180.0
    revocation_check_interval: float = 5.0
    negative_cache_ttl: float = 300.0
    chunk_size: int = WEBHOOK_RELAY_CHUNK_SIZE
    public_url: str | None = None
    strict: bool = False
    memory_messages: int = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A verified webhook ready to relay."""

    org: str
    routing_key: str
    delivery_id: str
    event: str
    action: str | None
    signature_header_name: str | None
    signature_header: str | None
    client_ip: str | None
    headers: dict[str, str]
    body: bytes
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AckOutcome:
    """What the orchestrator answered; ``result`` is one of ``ACK_RESULTS`` or the unknown value sent."""

    result: str
    reason: str | None
    connection_id: str
    message_id: str


SendText = Callable[[str], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]


@dataclass(slots=True)
class _PendingAck:
    done: anyio.Event = field(default_factory=anyio.Event)
    ack: dict[str, JSONValue] | None = None


class Connection:
    """One authenticated orchestrator socket. Sends are serialised so relay frames never interleave."""

    def __init__(self, *, connection_id: str, key: ApiKey, send_text: SendText, close: CloseSocket, now: float):
        self.connection_id = connection_id
        self.key = key
        self.org = key.org
        self._send_text = send_text
        self._close = close
        self._lock = anyio.Lock()
        self.accepted: dict[str, dict[str, JSONValue]] = {}
        self.pending: dict[str, _PendingAck] = {}
        self.connected_at = now
        self.last_heartbeat = now
        self.heartbeats = 0
        self.inflight = 0
        self.closed = False
        self.close_code: int | None = None

    async def send(self, *frames: dict[str, JSONValue]) -> None:
        """Send frames back to back (nothing else is sent in between)."""
        async with self._lock:
            for frame in frames:
                await self._send_text(json.dumps(frame, separators=(",", ":")))

    async def send_text(self, text: str) -> None:
        """Send one raw text frame."""
        async with self._lock:
            await self._send_text(text)

    async def close(self, code: int, reason: str) -> None:
        """Close the socket once; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        async with self._lock:
            await self._close(code, reason)

    def to_json(self) -> dict[str, JSONValue]:
        """Listing form for ``GET /api/connections``."""
        return {
            "connectionId": self.connection_id,
            "orgId": self.org,
            "keyPrefix": self.key.prefix,
            "keyName": self.key.name,
            "routingKeys": sorted(self.accepted),
            "heartbeats": self.heartbeats,
            "inflight": self.inflight,
        }


class RelayHub:
    """Connections, routing, delivery, recorded messages and key revocation for one relay process."""

    def __init__(self, store: RelayStore, settings: RelaySettings | None = None) -> None:
        self.store = store
        self.settings = settings or RelaySettings()
        self.connections: dict[str, Connection] = {}
        self.recorded: collections.deque[RecordedMessage] = collections.deque(maxlen=self.settings.memory_messages)
        self._changed = anyio.Event()
        self._negative: dict[tuple[str, str], float] = {}

    # --- connections --------------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """Start routing to an authenticated connection."""
        self.connections[conn.connection_id] = conn

    def detach(self, conn: Connection) -> None:
        """Forget a connection; deliveries waiting for its acks move on at once."""
        self.connections.pop(conn.connection_id, None)
        conn.closed = True
        for pending in conn.pending.values():
            pending.done.set()

    def register_sources(
        self, conn: Connection, message: dict[str, JSONValue], *, base_url: str
    ) -> dict[str, JSONValue]:
        """Apply ``source.register`` (upsert) and build the ``source.register.ack``."""
        accepted: list[JSONValue] = []
        rejected: list[JSONValue] = []
        sources = message.get("sources")
        for item in sources if isinstance(sources, list) else []:
            rk = item.get("routingKey") if isinstance(item, dict) else None
            if not isinstance(item, dict) or not isinstance(rk, str):
                rejected.append({"routingKey": str(rk or ""), "reason": "source entry without a routingKey"})
                continue
            reason = self._registration_problem(conn, rk)
            if reason is not None:
                rejected.append({"routingKey": rk, "reason": reason})
                continue
            conn.accepted[rk] = item
            self._negative.pop((conn.org, rk), None)
            accepted.append({"routingKey": rk, "webhookUrl": _webhook_url(base_url, conn.org, rk)})
        if rejected:
            log.info("connection %s: rejected routing keys %s", conn.connection_id, rejected)
        return {
            "type": "source.register.ack",
            "messageId": _str_or(message.get("messageId"), ""),
            "accepted": accepted,
            "rejected": rejected,
            "peers": [],
        }

    def _registration_problem(self, conn: Connection, rk: str) -> str | None:
        problem = routing.routing_key_problem(rk, conn.org)
        if problem is not None:
            return problem
        if not routing.key_allowed(conn.key.patterns, rk):
            return "routing key not allowed by this API key's routing patterns"
        source = self.store.get_source(rk)
        if source is not None and source.org != conn.org:
            return "routing key belongs to another organization"
        return None

    def deregister_sources(self, conn: Connection, message: dict[str, JSONValue]) -> dict[str, JSONValue]:
        """Apply ``source.deregister`` and build its ack."""
        keys = message.get("routingKeys")
        removed: list[JSONValue] = []
        for rk in keys if isinstance(keys, list) else []:
            if isinstance(rk, str) and conn.accepted.pop(rk, None) is not None:
                removed.append(rk)
        return {
            "type": "source.deregister.ack",
            "messageId": _str_or(message.get("messageId"), ""),
            "removed": removed,
        }

    def handle_ack(self, conn: Connection, message: dict[str, JSONValue]) -> None:
        """Hand a ``webhook.ack`` to the delivery waiting for its ``messageId`` (late acks are dropped)."""
        message_id = message.get("messageId")
        pending = conn.pending.get(message_id) if isinstance(message_id, str) else None
        if pending is None:
            log.info("connection %s: ack for unknown messageId %r ignored", conn.connection_id, message_id)
            return
        pending.ack = message
        pending.done.set()

    def heartbeat(self, conn: Connection) -> None:
        """Note a ``heartbeat`` frame."""
        conn.last_heartbeat = anyio.current_time()
        conn.heartbeats += 1

    # --- delivery -----------------------------------------------------------------------------

    def negatively_cached(self, org: str, routing_key: str) -> bool:
        """True while an earlier ``rejected_unknown_source`` for this org and key is remembered."""
        expiry = self._negative.get((org, routing_key))
        if expiry is None:
            return False
        if expiry <= anyio.current_time():
            del self._negative[(org, routing_key)]
            return False
        return True

    def candidates(self, org: str, routing_key: str) -> list[Connection]:
        """Open connections of ``org`` that registered ``routing_key``, least in-flight first."""
        found = [c for c in self.connections.values() if not c.closed and c.org == org and routing_key in c.accepted]
        return sorted(found, key=lambda c: c.inflight)

    async def deliver(self, delivery: Delivery) -> AckOutcome | None:
        """Relay ``delivery`` chunked and return the first ack, or None when nobody acked in time."""
        for conn in self.candidates(delivery.org, delivery.routing_key):
            outcome = await self._try_connection(conn, delivery)
            if outcome is not None:
                if outcome.result == "rejected_unknown_source":
                    self._negative[(delivery.org, delivery.routing_key)] = (
                        anyio.current_time() + self.settings.negative_cache_ttl
                    )
                return outcome
        return None

    async def _try_connection(self, conn: Connection, delivery: Delivery) -> AckOutcome | None:
        message_id = str(uuid.uuid4())
        pending = _PendingAck()
        conn.pending[message_id] = pending
        conn.inflight += 1
        try:
            frames = relay_frames(delivery, message_id=message_id, chunk_size=self.settings.chunk_size)
            try:
                await conn.send(*frames)
            except Exception as exc:  # a socket that died mid-send: try the next connection
                log.warning("connection %s: relay send failed: %s", conn.connection_id, exc)
                return None
            with anyio.move_on_after(self.settings.ack_timeout):
                await pending.done.wait()
            ack = pending.ack
            if ack is None:
                log.warning("connection %s: no ack for %s", conn.connection_id, message_id)
                return None
            result = ack.get("result")
            reason = ack.get("reason")
            return AckOutcome(
                result=result if isinstance(result, str) else "accepted",
                reason=reason if isinstance(reason, str) else None,
                connection_id=conn.connection_id,
                message_id=message_id,
            )
        finally:
            conn.pending.pop(message_id, None)
            conn.inflight -= 1

    # --- recorded messages --------------------------------------------------------------------

    def record(self, conn: Connection, message: dict[str, JSONValue], *, raw: str | None = None) -> RecordedMessage:
        """Keep an orchestrator frame (memory and SQLite) with any schema problems found; ``raw`` is the frame's
        text when the caller has it (stored as is instead of encoding ``message`` again)."""
        mtype = _str_or(message.get("type"), "")
        problems = schemas.check_message(message)
        if mtype not in KNOWN_ORCHESTRATOR_TYPES and not mtype.startswith(("dashboard.", "run.", "test.relay.")):
            problems.append(f"unknown message type {mtype!r}")
        recorded = self.store.record_message(
            org=conn.org,
            connection_id=conn.connection_id,
            type=mtype,
            body=message,
            problems=tuple(problems),
            raw=raw,
        )
        self.recorded.append(recorded)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        return recorded

    async def wait_messages(
        self,
        *,
        since: int,
        types: tuple[str, ...] = (),
        org: str | None = None,
        limit: int = 500,
        wait: float = 0.0,
    ) -> list[RecordedMessage]:
        """Recorded messages after ``since``; if none yet, wait up to ``wait`` seconds for one."""
        with anyio.move_on_after(wait):
            while True:
                changed = self._changed
                found = self.store.list_messages(since=since, types=types, org=org, limit=limit)
                if found or wait <= 0:
                    return found
                await changed.wait()
        return []

    # --- fault injection (tests of orchestrator clients) ----------------------------------------

    async def inject(self, connection_id: str, frame: dict[str, JSONValue] | str) -> None:
        """Send an arbitrary frame (a dict as JSON, a str verbatim) to one connection.

        Lets a test play a misbehaving Platform: malformed or out-of-order chunks, a legacy single-frame
        ``webhook.relay``, garbage text, a ``dashboard.*`` request.

        Raises:
            NotFound: no such live connection.
        """
        conn = self._live(connection_id)
        if isinstance(frame, str):
            await conn.send_text(frame)
        else:
            await conn.send(frame)

    async def drop(self, connection_id: str, code: int = 1001, reason: str = "Going away") -> None:
        """Close one connection with ``code`` (default 1001), as a Platform restart would.

        Raises:
            NotFound: no such live connection.
        """
        await self._live(connection_id).close(code, reason)

    def _live(self, connection_id: str) -> Connection:
        conn = self.connections.get(connection_id)
        if conn is None or conn.closed:
            raise NotFound(f"no live connection {connection_id!r}")
        return conn

    # --- revocation ---------------------------------------------------------------------------

    async def revoke_key(self, prefix: str) -> ApiKey:
        """Revoke a key by prefix and close its live sockets with 4001."""
        key = self.store.revoke_key(prefix)
        await self.close_revoked()
        return key

    async def close_revoked(self) -> int:
        """Close every connection whose key is revoked (e.g. by the CLI in another process)."""
        live = {c.key.id for c in self.connections.values() if not c.closed}
        revoked = self.store.revoked_key_ids(live)
        doomed = [c for c in self.connections.values() if c.key.id in revoked and not c.closed]
        for conn in doomed:
            log.info("closing connection %s: API key %s revoked", conn.connection_id, conn.key.prefix)
            await conn.close(4001, "API key revoked")
        return len(doomed)

    async def run_message_flusher(self, every: float = 0.25) -> None:
        """Forever: write recorded messages held in memory (so a quiet relay has them on disk within ``every``
        seconds)."""
        while True:
            await anyio.sleep(every)
            try:
                self.store.flush()
            except Exception:  # keep flushing; the error is logged
                log.exception("writing recorded messages failed")

    async def run_revocation_sweeper(self) -> None:
        """Forever: every ``revocation_check_interval`` seconds, close sockets of revoked keys."""
        while True:
            await anyio.sleep(self.settings.revocation_check_interval)
            try:
                await self.close_revoked()
            except Exception:  # keep sweeping; the error is logged
                log.exception("revocation sweep failed")


def relay_frames(delivery: Delivery, *, message_id: str, chunk_size: int) -> list[dict[str, JSONValue]]:
    """``webhook.relay.start`` plus ``ceil(size/chunk_size)`` chunks (at least one) for a delivery."""
    body = delivery.body
    count = max(1, math.ceil(len(body) / chunk_size))
    start: dict[str, JSONValue] = {
        "type": "webhook.relay.start",
        "messageId": message_id,
        "routingKey": delivery.routing_key,
        "deliveryId": delivery.delivery_id,
        "event": delivery.event,
        "action": delivery.action,
    }
    optional: dict[str, str | None] = {
        "signatureHeaderName": delivery.signature_header_name,
        "signatureHeader": delivery.signature_header,
        "clientIp": delivery.client_ip,
    }
    start.update({k: v for k, v in optional.items() if v is not None})
    start["headers"] = dict(delivery.headers)
    start["totalSize"] = len(body)
    start["chunkCount"] = count
    if delivery.request_id is not None:
        start["requestId"] = delivery.request_id
    frames: list[dict[str, JSONValue]] = [start]
    for seq in range(count):
        piece = body[seq * chunk_size : (seq + 1) * chunk_size]
        frames.append(
            {
                "type": "webhook.relay.chunk",
                "messageId": message_id,
                "sequence": seq,
                "data": base64.b64encode(piece).decode("ascii"),
                "final": seq == count - 1,
            }
        )
    return frames


def _webhook_url(base_url: str, org: str, routing_key: str) -> str | None:
    provider, _, rest = routing_key.partition(":")
    if provider == "github":
        return f"{base_url}/webhook/{org}/github"
    if provider == "generic":
        return f"{base_url}/webhook/{org}/generic/{rest.partition(':')[2]}"
    return None


def _str_or(value: JSONValue, default: str) -> str:
    return value if isinstance(value, str) else default
