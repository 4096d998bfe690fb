"""A scripted orchestrator for agent tests: a real websockets server playing the orchestrator's side.

It answers ``auth.request`` (``auth.success`` for the expected token, else ``auth.failure`` + close
4010) and ``agent.register`` (``register.ack`` echoing the labels), records every message with the
index of the connection it came on, and lets the test send messages, drop connections and hold the
auth reply of a given connection.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.support import waits

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    connection: int
    message: dict[str, Any]


class ScriptedOrchestrator:
    """Use as ``async with ScriptedOrchestrator(token=...) as peer:``; ``peer.url`` is the base URL."""

    def __init__(self, *, token: str | None) -> None:
        self.token = token
        self.received: list[Received] = []
        self.connections: list[ServerConnection] = []
        self.paths: list[str] = []
        self.closed: list[tuple[int, int | None]] = []
        self.hold_auth: dict[int, anyio.Event] = {}
        self._changed = anyio.Event()
        self._cursor = 0
        self._server: Server | None = None

    async def __aenter__(self) -> ScriptedOrchestrator:
        self._server = await serve(self._handler, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # --- scripting --------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any], *, connection: int = -1) -> None:
        await self.connections[connection].send(json.dumps(message))

    async def dispatch(
        self, *, job_config: dict[str, Any], repo_url: str = "", ref: str = "", sha: str = "", **extra: Any
    ) -> tuple[str, str]:
        """Send a ``job.dispatch``; returns ``(runId, jobId)``."""
        run_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
        await self.send(
            {
                "type": "job.dispatch",
                "messageId": str(uuid.uuid4()),
                "runId": run_id,
                "jobId": job_id,
                "repoUrl": repo_url,
                "ref": ref,
                "sha": sha,
                "lockFileUrl": "",
                "jobConfig": job_config,
                "timestamp": 1782662401456,
                **extra,
            }
        )
        return run_id, job_id

    async def drop(self, *, code: int = 1001, reason: str = "Server shutting down") -> None:
        await self.connections[-1].close(code, reason)

    # --- observing --------------------------------------------------------------------------------
    async def next(
        self, predicate: Predicate | None = None, *, within: float = 15, what: str = "the agent's next matching message"
    ) -> Received:
        """The next recorded message (after the previous ``next``) matching ``predicate``."""
        with waits.within(within, what, self._seen):
            while True:
                while self._cursor < len(self.received):
                    item = self.received[self._cursor]
                    self._cursor += 1
                    if predicate is None or predicate(item.message):
                        return item
                changed = self._changed
                await changed.wait()

    async def wait_for(
        self,
        predicate: Predicate,
        *,
        connection: int | None = None,
        within: float = 15,
        what: str = "a matching message from the agent",
    ) -> Received:
        """The first recorded message (from the start, optionally on one connection) matching ``predicate``."""
        where = "" if connection is None else f" on connection {connection}"
        with waits.within(within, what + where, self._seen):
            seen = 0
            while True:
                for item in self.received[seen:]:
                    if (connection is None or item.connection == connection) and predicate(item.message):
                        return item
                seen = len(self.received)
                changed = self._changed
                await changed.wait()

    async def wait_closed(self, connection: int, *, within: float = 15) -> int | None:
        """The close code of connection ``connection`` once it closed."""
        with waits.within(within, f"connection {connection} to close", self._seen):
            while True:
                for index, code in self.closed:
                    if index == connection:
                        return code
                changed = self._changed
                await changed.wait()

    def _seen(self) -> str:
        last = [(r.connection, r.message.get("type"), r.message.get("state")) for r in self.received[-10:]]
        return (
            f"{len(self.connections)} connection(s), closed {self.closed}; {len(self.received)} message(s), "
            f"the last (connection, type, state) {last}"
        )

    def job_messages(self, job_id: str, *, connection: int | None = None) -> list[dict[str, Any]]:
        return [
            r.message
            for r in self.received
            if r.message.get("jobId") == job_id and (connection is None or r.connection == connection)
        ]

    def _record(self, connection: int, message: dict[str, Any]) -> None:
        self.received.append(Received(connection=connection, message=message))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- the orchestrator's side --------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        self.connections.append(ws)
        self.paths.append(ws.request.path if ws.request is not None else "")
        self._notify()
        try:
            async for raw in ws:
                message = json.loads(raw)
                self._record(index, message)
                kind = message.get("type")
                if kind == "auth.request":
                    gate = self.hold_auth.get(index)
                    if gate is not None:
                        await gate.wait()
                    if message.get("token") == self.token:
                        await ws.send(json.dumps({"type": "auth.success", "connectionId": str(uuid.uuid4())}))
                    else:
                        await ws.send(json.dumps({"type": "auth.failure", "reason": "Invalid or expired token"}))
                        await ws.close(4010, "Authentication failed")
                elif kind == "agent.register":
                    await ws.send(
                        json.dumps(
                            {
                                "type": "register.ack",
                                "agentId": message["agentId"],
                                "labels": message["labels"],
                                "scalerManaged": False,
                            }
                        )
                    )
        except ConnectionClosed:
            pass
        finally:
            self.closed.append((index, ws.close_code))
            self._notify()
