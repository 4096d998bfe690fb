"""The orchestrator WebSocket endpoint (``/ws``): auth, source registration, heartbeats, telemetry sink.

Close codes are the Platform's: 4001 unauthorized (bad, unknown or revoked key), 4002 no ``auth.request``
as the first frame within the auth timeout, 4003 invalid message (strict mode only), 4004 heartbeat timeout.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import cast

import anyio
from starlette.types import Receive, Scope, Send

from kici_core.jsontypes import JSONValue
from kici_runtime.relay.hub import PROTOCOL_VERSION, WS_MAX_PAYLOAD_BYTES, Connection, RelayHub

log = logging.getLogger("kici.relay")

CLOSE_UNAUTHORIZED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_INVALID_MESSAGE = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4004
CLOSE_TOO_BIG = 1009

_Frame = dict[str, JSONValue]


class _Closed(Exception):
    """The peer went away."""


class AsgiWebSocket:
    """The few WebSocket operations the endpoint needs, straight on ASGI messages."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._gone = False

    async def accept(self) -> None:
        """Take the ``websocket.connect`` and accept the handshake; raises _Closed if the peer left."""
        if (await self._receive())["type"] != "websocket.connect":
            self._gone = True
            raise _Closed
        await self._send({"type": "websocket.accept"})

    async def receive_text(self) -> str | None:
        """Next text frame; None for a binary frame; raises _Closed on disconnect."""
        if self._gone:
            raise _Closed
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self._gone = True
            raise _Closed
        text = message.get("text")
        return text if isinstance(text, str) else None

    async def send_text(self, data: str) -> None:
        """Send one text frame (raises ``OSError`` once the peer has gone)."""
        await self._send({"type": "websocket.send", "text": data})

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; nothing happens if the socket is already closed."""
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (RuntimeError, OSError):
            pass

    def base_url(self, public_url: str | None) -> str:
        """Where webhook senders reach this relay: ``public_url``, else the scheme and host of this request."""
        if public_url:
            return public_url.rstrip("/")
        scheme = "https" if self._scope.get("scheme") == "wss" else "http"
        for name, value in self._scope["headers"]:
            if name == b"host":
                return f"{scheme}://{value.decode('latin-1')}"
        server = self._scope.get("server")
        host, port = server if server else ("localhost", None)
        return f"{scheme}://{host}" + (f":{port}" if port else "")


def _parse(text: str | None) -> _Frame | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return cast(_Frame, value)


async def relay_websocket(ws: AsgiWebSocket, hub: RelayHub) -> None:
    """Serve one orchestrator connection from handshake to close."""
    try:
        await ws.accept()
        conn = await _authenticate(ws, hub)
    except _Closed:
        return
    if conn is None:
        return
    hub.attach(conn)
    log.info("orchestrator connected: %s (org %s, key %s)", conn.connection_id, conn.org, conn.key.prefix)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watchdog, conn, hub.settings.heartbeat_timeout)
            try:
                await _serve_frames(ws, hub, conn)
            except _Closed:
                pass
            finally:
                tg.cancel_scope.cancel()
    finally:
        hub.detach(conn)
        log.info("orchestrator disconnected: %s", conn.connection_id)


async def _authenticate(ws: AsgiWebSocket, hub: RelayHub) -> Connection | None:
    text: str | None = None
    timed_out = True
    with anyio.move_on_after(hub.settings.auth_timeout):
        text = await ws.receive_text()
        timed_out = False
    frame = _parse(text)
    if timed_out or frame is None or frame.get("type") != "auth.request":
        await ws.close(CLOSE_AUTH_TIMEOUT, "Expected auth.request" if not timed_out else "Auth timeout")
        return None
    version = frame.get("protocolVersion")
    token = frame.get("token")
    key = None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        reason = f"unsupported protocolVersion (this relay speaks {PROTOCOL_VERSION})"
    elif not isinstance(token, str) or not token:
        reason = "missing token"
    else:
        key = hub.store.authenticate(token)
        reason = "invalid or revoked API key"
    if key is None:
        await _send_raw(ws, {"type": "auth.failure", "reason": reason})
        await ws.close(CLOSE_UNAUTHORIZED, "Unauthorized")
        return None
    conn = Connection(
        connection_id=str(uuid.uuid4()), key=key, send_text=ws.send_text, close=ws.close, now=anyio.current_time()
    )
    await conn.send(
        {
            "type": "auth.success",
            "connectionId": conn.connection_id,
            "orgId": key.org,
            "orgPublicAlias": "oal_" + uuid.uuid5(uuid.NAMESPACE_URL, "kici-relay:" + key.org).hex[:16],
            "provenanceIssuer": None,
        }
    )
    return conn


async def _send_raw(ws: AsgiWebSocket, frame: _Frame) -> None:
    try:
        await ws.send_text(json.dumps(frame))
    except (RuntimeError, OSError):
        pass


async def _watchdog(conn: Connection, limit: float) -> None:
    while True:
        remaining = conn.last_heartbeat + limit - anyio.current_time()
        if remaining <= 0:
            log.info("connection %s: no heartbeat for %.0f s", conn.connection_id, limit)
            await conn.close(CLOSE_HEARTBEAT_TIMEOUT, "Heartbeat timeout")
            return
        await anyio.sleep(remaining)


async def _serve_frames(ws: AsgiWebSocket, hub: RelayHub, conn: Connection) -> None:
    base_url = ws.base_url(hub.settings.public_url)
    while not conn.closed:
        text = await ws.receive_text()
        if text is not None and len(text) > WS_MAX_PAYLOAD_BYTES // 4 and len(text.encode()) > WS_MAX_PAYLOAD_BYTES:
            await conn.close(CLOSE_TOO_BIG, "Frame too large")
            return
        frame = _parse(text)
        if frame is None:
            log.warning("connection %s: ignoring a frame that is not a JSON message", conn.connection_id)
            if hub.settings.strict:
                await conn.close(CLOSE_INVALID_MESSAGE, "Invalid message")
            continue
        mtype = frame["type"]
        if mtype == "heartbeat":
            hub.heartbeat(conn)
            continue
        if mtype == "auth.request":
            log.warning("connection %s: auth.request after authentication ignored", conn.connection_id)
            continue
        recorded = hub.record(conn, frame, raw=text)
        if mtype == "source.register":
            await conn.send(hub.register_sources(conn, frame, base_url=base_url))
        elif mtype == "source.deregister":
            await conn.send(hub.deregister_sources(conn, frame))
        elif mtype == "webhook.ack":
            hub.handle_ack(conn, frame)
        if recorded.problems:
            log.warning("connection %s: %s: %s", conn.connection_id, mtype, "; ".join(recorded.problems))
            if hub.settings.strict:
                await conn.close(CLOSE_INVALID_MESSAGE, "Invalid message")
