"""The ``/ws`` endpoint agents connect to: handshake phases, token auth, registration gates, limits.

One :class:`AgentEndpoint` serves every agent socket of the process. Per connection it runs the phases of
agent-protocol spec §3.2 (``auth.request`` within 5 s in token mode, then ``agent.register`` within 10 s),
the register gates of §3.4, the size and rate limits of §2.4 and the validation rules of §2.3, and hands
everything else to a :class:`Hub` (the runtime's dispatcher driver). Nothing an agent sends can crash the
process: bad frames close that one socket with the spec's code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

import anyio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from kici_adapters.agents import wire
from kici_adapters.agents.ratelimit import HARD_MAX_CHARS, RateLimiter
from kici_core import errors, routing
from kici_core.jsontypes import JSONValue
from kici_core.ports import TokenStore
from kici_core.token_records import AgentToken

__all__ = ["AgentConnection", "AgentEndpoint", "Hub"]

log = logging.getLogger("kici.agents")

CLOSE_GOING_AWAY = 1001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_INVALID = 4003
CLOSE_PROTOCOL = 4005
CLOSE_INTERNAL = 4006
CLOSE_AUTH_FAILED = 4010
MIN_PROTOCOL_VERSION = 1
SELF_REPORTED = ("kici:os:", "kici:arch:", "kici:host:")
NEVER_DROPPED = frozenset({"job.status", "job.ack", "job.reject", "step.status"})


def _reason(text: str) -> str:
    """A close reason cut to at most 123 UTF-8 bytes (RFC 6455)."""
    data = text.encode()[:123]
    return data.decode(errors="ignore")


class AgentConnection:
    """One agent socket as the hub sees it. Kept small: a process holds one per connected agent."""

    __slots__ = (
        "_closed",
        "_scope",
        "_send_lock",
        "agent_id",
        "close_code",
        "connection_id",
        "registered",
        "token",
        "violations",
        "websocket",
        "wire_labels",
    )

    def __init__(self, websocket: WebSocket, connection_id: str) -> None:
        self.websocket = websocket
        self.connection_id = connection_id
        self.agent_id: str | None = None
        self.wire_labels: list[str] = []
        self.token: AgentToken | None = None
        self.registered = False
        self.violations: list[float] = []
        self._send_lock = anyio.Lock()
        self._closed = False
        self._scope: anyio.CancelScope | None = None  # the connection's handler, cancelled once closed
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: dict[str, JSONValue]) -> bool:
        """Send one JSON text frame; False when the socket is closed or the send fails."""
        if self.closed:
            return False
        text = json.dumps(message, separators=(",", ":"))
        try:
            async with self._send_lock:
                await self.websocket.send_text(text)
        except Exception:  # a dead socket: the receive loop sees the disconnect
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` / ``reason`` (idempotent); the connection's receive loop then ends."""
        if self.closed:
            return
        self.close_code = code
        self._closed = True
        try:
            async with self._send_lock:
                await self.websocket.close(code, _reason(reason))
        except Exception:  # already gone
            pass
        if self._scope is not None:  # stop the connection's handler (a no-op once it has ended)
            self._scope.cancel()


class Hub(Protocol):
    """What the endpoint needs from the dispatcher driver."""

    def token_of(self, agent_id: str) -> str | None:
        """The token id the agent's current connection authenticated with (gate 3)."""
        ...

    async def bind_token(self, agent_id: str, token_id: str) -> bool:
        """Bind the agent id to the token durably (gate 3 across disconnects); False when another valid token
        holds it. Raises ``Unavailable``."""
        ...

    async def register(self, conn: AgentConnection, msg: wire.AgentRegister, labels: routing.AgentLabels) -> None:
        """A registration passed the gates (first or refresh). Must send ``register.ack``."""
        ...

    async def handle(self, conn: AgentConnection, msg: dict[str, Any], model: Any) -> None:
        """A validated message from a registered agent."""
        ...

    def heartbeat(self, conn: AgentConnection) -> None:
        """A connection ``heartbeat``."""
        ...

    async def gone(self, conn: AgentConnection) -> None:
        """The socket of a registered agent closed."""
        ...


class _Closed(Exception):
    pass


class AgentEndpoint:
    """Serves ``/ws``. Use :meth:`route` for ``build_app(extra_routes=...)``.

    Args:
        hub: the dispatcher driver.
        tokens: agent token lookup (token mode).
        auth_mode: ``token`` (default) or ``none``.
        auth_timeout / register_timeout: phase deadlines in seconds (5 / 10 per spec).
    """

    def __init__(
        self,
        *,
        hub: Hub,
        tokens: TokenStore | None,
        auth_mode: Literal["token", "none"] = "token",
        auth_timeout: float = 5.0,
        register_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self._tokens = tokens
        self._mode = auth_mode
        self._auth_timeout = auth_timeout
        self._register_timeout = register_timeout
        self._clock = clock
        self.connections: set[AgentConnection] = set()
        self.crashes = 0

    def route(self, path: str = "/ws") -> WebSocketRoute:
        """The Starlette route."""
        return WebSocketRoute(path, self.serve)

    async def kick_token(self, token_id: str) -> int:
        """Revocation: ``auth.failure`` + close 4010 on every live socket authenticated with ``token_id``."""
        kicked = 0
        for conn in list(self.connections):
            if conn.token is not None and conn.token.id == token_id:
                await conn.send({"type": "auth.failure", "reason": "Token revoked"})
                await conn.close(CLOSE_AUTH_FAILED, "Token revoked")
                kicked += 1
        return kicked

    async def close_all(self) -> None:
        """Orchestrator shutdown: close every socket with 1001."""
        for conn in list(self.connections):
            await conn.close(CLOSE_GOING_AWAY, "Server shutting down")

    # ------------------------------------------------------------------------------------ per socket
    async def serve(self, websocket: WebSocket) -> None:
        """The WebSocket handler."""
        await websocket.accept()
        conn = AgentConnection(websocket, str(uuid.uuid4()))
        self.connections.add(conn)
        try:
            # One cancel scope, no helper task: closing the connection from anywhere cancels it.
            with anyio.CancelScope() as conn._scope:
                try:
                    await self._handshake(conn)
                    await self._registered_loop(conn)
                except _Closed:
                    pass
                except Exception:
                    self.crashes += 1
                    log.exception("agent connection failed", extra={"agentId": conn.agent_id})
                    await conn.close(CLOSE_INTERNAL, "Internal error")
        finally:
            self.connections.discard(conn)
            conn._closed = True
            if conn.registered:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.hub.gone(conn)
                    except Exception:
                        log.exception("agent disconnect handling failed", extra={"agentId": conn.agent_id})

    async def _receive(self, conn: AgentConnection) -> str:
        message = await conn.websocket.receive()
        if message["type"] == "websocket.disconnect":
            conn._closed = True
            raise _Closed
        text = message.get("text")
        if text is None:
            await self._fail(conn, CLOSE_INVALID, "Invalid message")
        return str(text)

    async def _fail(
        self, conn: AgentConnection, code: int, reason: str, *, failure: str | None = None, error: bool = False
    ) -> None:
        if failure is not None:
            await conn.send({"type": "auth.failure", "reason": failure})
        if error:
            await conn.send({"type": "error", "code": "INVALID_MESSAGE", "message": "Invalid message format"})
        await conn.close(code, reason)
        raise _Closed

    async def _first(self, conn: AgentConnection, seconds: float, reason: str) -> dict[str, Any]:
        with anyio.move_on_after(seconds):
            text = await self._receive(conn)
            if len(text) > HARD_MAX_CHARS:
                await self._fail(conn, CLOSE_INVALID, "Message too large")
            try:
                return wire.parse_frame(text)
            except wire.InvalidFrame:
                await self._fail(conn, CLOSE_INVALID, "Malformed JSON")
        await self._fail(conn, CLOSE_AUTH_TIMEOUT, reason)
        raise AssertionError("unreachable")

    async def _handshake(self, conn: AgentConnection) -> None:
        """Auth (token mode) and the first ``agent.register``. Returns before the registered loop starts, so
        the parsed first frames are not kept for the connection's lifetime."""
        first = None
        if self._mode == "token":
            await self._authenticate(conn, await self._first(conn, self._auth_timeout, "Auth timeout"))
        else:
            first = await self._first(conn, self._register_timeout, "Registration timeout")
            if first.get("type") == wire.AUTH_REQUEST:
                try:
                    wire.AuthRequest.model_validate(first)
                except ValueError:
                    await self._fail(conn, CLOSE_INVALID, "First message must be agent.register")
                await conn.send({"type": "auth.success", "connectionId": conn.connection_id})
                first = None
        if first is None:
            first = await self._first(conn, self._register_timeout, "Registration timeout")
        if first.get("type") != "agent.register":
            await self._fail(conn, CLOSE_INVALID, "First message must be agent.register")
        try:
            reg = wire.AgentRegister.model_validate(first)
        except ValueError:
            await self._fail(conn, CLOSE_INVALID, "First message must be agent.register")
        await self._register(conn, reg)

    async def _authenticate(self, conn: AgentConnection, msg: dict[str, Any]) -> None:
        try:
            req = wire.AuthRequest.model_validate(msg)
        except ValueError:
            await self._fail(
                conn, CLOSE_AUTH_FAILED, "Invalid auth message", failure="First message must be auth.request"
            )
        if req.protocolVersion < MIN_PROTOCOL_VERSION:
            await self._fail(
                conn, CLOSE_PROTOCOL, "Unsupported protocol version", failure="Unsupported protocol version"
            )
        if self._tokens is None:
            await self._fail(conn, CLOSE_AUTH_FAILED, "Server misconfiguration", failure="Server misconfiguration")
        assert self._tokens is not None
        digest = hashlib.sha256(req.token.encode()).hexdigest()
        try:
            token = await self._tokens.agent_token_by_hash(digest)
        except errors.Unavailable:
            await self._fail(conn, CLOSE_INTERNAL, "Token store unavailable")
        if token is None:
            await self._fail(conn, CLOSE_AUTH_FAILED, "Authentication failed", failure="Invalid or expired token")
        conn.token = token
        await conn.send({"type": "auth.success", "connectionId": conn.connection_id})

    async def _register(self, conn: AgentConnection, reg: wire.AgentRegister) -> None:
        token = conn.token
        scoped = tuple(token.labels) if token is not None else ()
        mandatory = tuple(token.mandatory_labels) if token is not None else ()
        root = "kici:privileged:root"
        if root in reg.labels or root in scoped or root in mandatory:
            uid = reg.runningAsUid
            if uid != 0:
                shown = "absent" if uid is None else str(int(uid))
                await self._fail(
                    conn, CLOSE_AUTH_FAILED, f"privileged-root token presented by non-root agent (uid={shown})"
                )
        if token is not None and scoped:
            offenders = [x for x in reg.labels if x not in scoped and not x.startswith(SELF_REPORTED)]
            if offenders:
                await self._fail(
                    conn, CLOSE_AUTH_FAILED, f"Agent labels exceed token-bound scope: {','.join(offenders)}"
                )
        if (
            token is not None
            and token.agent_type == "ephemeral"
            and token.created_by is not None
            and token.created_by != reg.agentId
        ):
            await self._fail(
                conn,
                CLOSE_AUTH_FAILED,
                f"Ephemeral token bound to a different agentId: expected {token.created_by}, got {reg.agentId}",
            )
        if token is not None:
            bound = self.hub.token_of(reg.agentId)
            if bound is not None and bound != token.id:
                await self._fail(conn, CLOSE_INVALID, "AgentId already registered with a different token")
            if not (conn.registered and conn.agent_id == reg.agentId):
                try:
                    held = await self.hub.bind_token(reg.agentId, token.id)
                except errors.Unavailable:
                    await self._fail(conn, CLOSE_INTERNAL, "Token store unavailable")
                except errors.InvalidInput:
                    await self._fail(conn, CLOSE_INVALID, "Invalid message", error=True)
                if not held:  # the id belongs to the token that first registered it, even while it is away
                    log.warning("agent id refused: bound to another token", extra={"agentId": reg.agentId})
                    await self._fail(conn, CLOSE_INVALID, "AgentId already registered with a different token")
        if conn.registered and conn.agent_id != reg.agentId:
            await self._fail(conn, CLOSE_INVALID, "Invalid message", error=True)
        try:
            labels = routing.AgentLabels(
                labels=frozenset(reg.labels),
                mandatory_labels=frozenset(mandatory),
                platform=reg.platform,
                arch=reg.arch,
            )
        except errors.InvalidInput:
            await self._fail(conn, CLOSE_INVALID, "Invalid message", error=True)
        conn.agent_id = reg.agentId
        conn.wire_labels = list(reg.labels)
        await self.hub.register(conn, reg, labels)
        conn.registered = True

    async def _registered_loop(self, conn: AgentConnection) -> None:
        limiter = RateLimiter(self._clock())
        while True:
            text = await self._receive(conn)
            if len(text) > HARD_MAX_CHARS:
                await self._fail(conn, CLOSE_INVALID, "Message too large")
            try:
                msg = wire.parse_frame(text)
            except wire.InvalidFrame:
                await self._fail(conn, CLOSE_INVALID, "Malformed JSON")
            kind = msg.get("type")
            if kind == "heartbeat":
                self.hub.heartbeat(conn)
                continue
            decision = limiter.check(len(text), self._clock(), force=isinstance(kind, str) and kind in NEVER_DROPPED)
            if decision.close is not None:
                await self._fail(conn, CLOSE_INVALID, decision.close)
            if decision.drop:
                await conn.send({"type": "rate.limit.warning", "retryAfterMs": decision.retry_after_ms})
                continue
            try:
                model = wire.validate(msg)
            except wire.InvalidMessage as exc:
                log.info("invalid agent message", extra={"agentId": conn.agent_id, "error": str(exc)})
                await self._fail(conn, CLOSE_INVALID, "Invalid message", error=True)
            if isinstance(model, wire.AgentRegister):
                await self._register(conn, model)
                continue
            reply = wire.extended_reply(msg)
            if reply is not None:
                await conn.send(reply)
                continue
            try:
                await self.hub.handle(conn, msg, model)
            except errors.Unavailable as exc:
                log.warning(
                    "agent message not recorded: storage unavailable",
                    extra={"agentId": conn.agent_id, "type": kind, "error": str(exc)},
                )
            except errors.InvalidInput as exc:  # a value the store cannot hold: the agent's fault, not ours
                log.info("invalid agent message", extra={"agentId": conn.agent_id, "type": kind, "error": str(exc)})
                await self._fail(conn, CLOSE_INVALID, "Invalid message", error=True)
