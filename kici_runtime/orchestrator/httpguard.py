"""Limits every HTTP request meets before a route sees it: header and body read timeouts, the body-size limit,
and URLs carrying NUL bytes.

* :func:`protocol_with_header_timeout` gives uvicorn an HTTP protocol that closes a connection whose request
  headers have not all arrived ``header_timeout`` seconds after it opened (or after the first byte of the next
  request on a kept-alive connection), answering ``408`` (slowloris clients are let go instead of held).
* :class:`RequestGuard` (ASGI middleware) answers ``400`` for a path or query string carrying a NUL byte,
  ``413 Payload Too Large`` for a body over ``max_body_bytes`` (by ``Content-Length`` or as it streams in),
  and ``408`` when the body has not fully arrived ``body_timeout`` seconds after the request started. The
  route reading the body sees a disconnect; whatever it answers is replaced by the guard's answer. A route
  that fails because the client went away mid-body is not an application error (nothing is logged).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestGuard", "protocol_with_header_timeout"]

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\nconnection: close\r\n\r\nRequest Timeout"
)


def protocol_with_header_timeout(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline on receiving request headers (``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT_408)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def _json(status: int, message: str) -> tuple[int, bytes, bytes]:
    return status, json.dumps({"error": message}).encode(), b"application/json"


class RequestGuard:
    """ASGI middleware: NUL bytes in the URL (400), body size (413) and body read time (408).

    Args:
        app: the wrapped application.
        max_body_bytes: the body-size limit of every route.
        body_timeout: seconds from the start of a request to the end of its body.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await _answer(send, *_json(400, "Invalid request: the URL contains a NUL byte"))
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await _answer(send, 413, b"Payload Too Large", b"text/plain; charset=utf-8")
                return
        deadline = time.monotonic() + self.body_timeout
        state: dict[str, Any] = {"received": 0, "done": False, "failure": None, "started": False, "gone": False}

        async def guarded_receive() -> Message:
            if state["failure"] is not None:
                return {"type": "http.disconnect"}
            if state["done"]:
                return await receive()  # after the body: only a disconnect can come, whenever it does
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                message = await receive()
                if message["type"] == "http.disconnect":
                    state["gone"] = True
                elif message["type"] == "http.request":
                    state["received"] += len(message.get("body", b""))
                    if state["received"] > self.max_body_bytes:
                        state["failure"] = (413, b"Payload Too Large", b"text/plain; charset=utf-8")
                        return {"type": "http.disconnect"}
                    if not message.get("more_body", False):
                        state["done"] = True
                return message
            state["failure"] = _json(408, "Request Timeout: the request body did not arrive in time")
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            if state["failure"] is not None:
                return  # the guard answers instead
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            # the route saw the disconnect the guard made, or the client went away mid-body: nobody to answer
            if state["failure"] is None and not state["gone"]:
                raise
        if state["failure"] is not None and not state["started"]:
            await _answer(send, *state["failure"])


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if status == 408:  # a stalled client: do not wait for the rest of its request
        headers.append((b"connection", b"close"))
    # otherwise the server reads and discards what the client still sends, so the client sees this answer
    # instead of a reset connection
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
