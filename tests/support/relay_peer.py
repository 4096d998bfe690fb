"""Test helpers for the reference relay: run it under uvicorn in-process, and a scripted orchestrator peer.

``running_relay()`` starts the real app on a free loopback port and stops it on exit. ``RelayPeer`` is a
raw ``websockets`` client that speaks the orchestrator side of the protocol one frame at a time, so tests
control exactly what the relay sees (including wrong or missing acks).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kici_adapters.relay.store import RelayStore
from kici_runtime.relay.app import create_app
from kici_runtime.relay.hub import RelayHub, RelaySettings
from kici_runtime.relay.server import RelayServer, bind_socket, uvicorn_config
from tests.support import waits

Frame = dict[str, Any]

# Upper bound on any single wait in these helpers (a failing test ends instead of hanging).
BOUND = 10.0


@dataclass
class RunningRelay:
    """A relay served on loopback."""

    base_url: str
    ws_url: str
    store: RelayStore
    hub: RelayHub


@asynccontextmanager
async def running_relay(
    db_path: str, settings: RelaySettings | None = None, *, compression: bool = False
) -> AsyncIterator[RunningRelay]:
    """Serve a relay over ``db_path`` on 127.0.0.1 (free port) for the duration of the block."""
    store = RelayStore(db_path)
    app = create_app(store, settings)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = RelayServer(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", compression=compression))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with waits.within(10, f"the relay to start serving on port {port}"):
                await server.ready.wait()
            if not server.started:
                raise RuntimeError("relay did not start")
            try:
                yield RunningRelay(
                    base_url=f"http://127.0.0.1:{port}",
                    ws_url=f"ws://127.0.0.1:{port}/ws",
                    store=store,
                    hub=app.state.hub,
                )
            finally:
                server.should_exit = True
    finally:
        sock.close()
        store.close()


@dataclass
class ReceivedDelivery:
    """A relayed webhook as the orchestrator sees it: the start frame, its chunks and the joined body."""

    start: Frame
    chunks: list[Frame] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        """The reassembled body bytes."""
        return b"".join(base64.b64decode(c["data"]) for c in self.chunks)

    @property
    def message_id(self) -> str:
        """The relay's messageId for this attempt."""
        return str(self.start["messageId"])


class RelayPeer:
    """The orchestrator side of one relay connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[Frame] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, ws_url: str) -> AsyncIterator[RelayPeer]:
        """Open a socket to ``ws_url`` (no auth yet)."""
        async with connect(ws_url, max_size=32 * 1024 * 1024, open_timeout=10) as ws:
            yield cls(ws)

    def _seen(self) -> str:
        return f"{len(self.received)} frame(s), the last types {[f.get('type') for f in self.received[-8:]]}"

    async def send(self, frame: Frame) -> None:
        """Send one JSON frame."""
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> Frame:
        """The next frame (raises ConnectionClosed when the relay closes)."""
        with waits.within(BOUND, "a frame from the relay", self._seen):
            raw = await self.ws.recv()
        frame: Frame = json.loads(raw)
        self.received.append(frame)
        return frame

    async def recv_type(self, mtype: str) -> Frame:
        """Skip frames until one of ``mtype`` arrives."""
        with waits.within(BOUND, f"a {mtype} frame from the relay", self._seen):
            while True:
                frame = await self.recv()
                if frame.get("type") == mtype:
                    return frame

    async def auth(self, token: str, protocol_version: int = 1) -> Frame:
        """Send ``auth.request`` and return the relay's answer (auth.success or auth.failure)."""
        await self.send(
            {
                "type": "auth.request",
                "token": token,
                "protocolVersion": protocol_version,
                "capabilities": {"orchRole": "coordinator", "supportedDashboardRequests": []},
            }
        )
        return await self.recv()

    async def register(self, *routing_keys: str) -> Frame:
        """Send ``source.register`` for the keys and return the ``source.register.ack``."""
        message_id = str(uuid.uuid4())
        sources = [
            {
                "provider": rk.split(":", 1)[0],
                "routingKey": rk,
                "name": rk,
                "subtype": "github_app" if rk.startswith("github:") else "generic_webhook",
            }
            for rk in routing_keys
        ]
        await self.send({"type": "source.register", "messageId": message_id, "sources": sources, "mode": "platform"})
        ack = await self.recv_type("source.register.ack")
        assert ack["messageId"] == message_id
        return ack

    async def receive_delivery(self) -> ReceivedDelivery:
        """Read a ``webhook.relay.start`` and all its chunks, checking order as the orchestrator would."""
        start = await self.recv_type("webhook.relay.start")
        delivery = ReceivedDelivery(start=start)
        for expected in range(int(start["chunkCount"])):
            chunk = await self.recv()
            assert chunk["type"] == "webhook.relay.chunk", chunk
            assert chunk["messageId"] == start["messageId"]
            assert chunk["sequence"] == expected
            assert chunk["final"] is (expected == start["chunkCount"] - 1)
            delivery.chunks.append(chunk)
        return delivery

    async def ack(self, delivery: ReceivedDelivery, result: str | None = "accepted", reason: str | None = None) -> None:
        """Answer a delivery with ``webhook.ack`` (``result=None`` omits the field, like legacy senders)."""
        frame: Frame = {
            "type": "webhook.ack",
            "messageId": delivery.message_id,
            "deliveryId": delivery.start["deliveryId"],
        }
        if result is not None:
            frame["result"] = result
        if reason is not None:
            frame["reason"] = reason
        await self.send(frame)

    async def wait_closed(self) -> int | None:
        """Read until the relay closes the socket; return the close code it sent."""
        with waits.within(BOUND, "the relay to close the socket", self._seen):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None
