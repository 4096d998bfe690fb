"""The container engine client over a real unix socket: a request cancelled in the very event-loop turn in which
the engine's answer arrives (the scaler stopping while it waits on the engine) leaves no error behind in the event
loop, and the client keeps working."""

from __future__ import annotations

import asyncio
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from kici_adapters.containers.engine import EngineClient

pytestmark = pytest.mark.anyio

EMPTY_LIST = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"


class HeldEngine:
    """An engine on a unix socket that reads each request and leaves the answer to the test
    (``requests`` yields the connection a request arrived on)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: queue.Queue[socket.socket] = queue.Queue()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            data += chunk
            while b"\r\n\r\n" in data:  # the client's requests have no body
                _, data = data.split(b"\r\n\r\n", 1)
                self.requests.put(conn)

    def close(self) -> None:
        self._listener.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def engine() -> Iterator[HeldEngine]:
    folder = Path(tempfile.mkdtemp(prefix="kici-ec-"))  # unix socket paths must stay short
    server = HeldEngine(folder / "engine.sock")
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_request_cancelled_as_the_answer_arrives_leaves_no_loop_error(engine: HeldEngine) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    client = EngineClient(socket_path=str(engine.path), timeout=30)
    try:
        for _ in range(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.list_managed)
                with anyio.fail_after(30):
                    conn = await anyio.to_thread.run_sync(engine.requests.get)
                # the answer is on the socket before the next poll, and the cancellation is queued ahead of it:
                # both land in the same turn of the event loop, the cancellation first
                conn.sendall(EMPTY_LIST)
                loop.call_soon(tg.cancel_scope.cancel)
            await anyio.lowlevel.checkpoint()
        async with anyio.create_task_group() as tg:  # after all that, a request is answered as usual

            async def answer() -> None:
                with anyio.fail_after(30):
                    conn = await anyio.to_thread.run_sync(engine.requests.get)
                conn.sendall(EMPTY_LIST)

            tg.start_soon(answer)
            with anyio.fail_after(30):
                assert await client.list_managed() == []
    finally:
        await client.aclose()
        loop.set_exception_handler(None)
    assert [str(c.get("exception") or c.get("message")) for c in loop_errors] == []
