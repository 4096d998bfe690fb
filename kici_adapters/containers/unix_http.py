"""An httpx transport to an HTTP server on a unix socket (the container engine's), over asyncio streams.

httpx's own ``uds=`` transport reads the socket through anyio's raw-socket stream, which registers
``Future.set_result`` as the socket's reader callback. When a request is cancelled (shutdown, a timeout) in the
same event-loop turn in which the engine's answer arrives, that callback then runs on the cancelled future and
raises ``InvalidStateError`` inside the event loop. asyncio's stream reader checks its waiter first, so this
transport, which is otherwise httpx's, cannot hit that race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

__all__ = ["unix_transport"]


def unix_transport(path: str) -> httpx.AsyncHTTPTransport:
    """httpx's transport to the server at the unix socket ``path``, its connections made with asyncio streams."""
    transport = httpx.AsyncHTTPTransport(uds=path)
    transport._pool = httpcore.AsyncConnectionPool(uds=path, network_backend=_AsyncioUnixBackend())
    return transport


class _AsyncioUnixStream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's API
        try:
            with anyio.fail_after(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "read timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's API
        if not buffer:
            return
        try:
            with anyio.fail_after(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "write timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._writer.wait_closed()
        except OSError:
            pass  # the peer went first: the connection is closed either way

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive connection the engine has closed is not reused
            return self._reader.at_eof() or self._writer.is_closing()
        return self._writer.get_extra_info(info)


class _AsyncioUnixBackend(httpcore.AsyncNetworkBackend):
    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's API
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or "connect timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _AsyncioUnixStream(reader, writer)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's API
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("this transport connects to a unix socket only")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
