"""The agent's WebSocket session with the orchestrator: handshake, heartbeats, replay, reconnect.

One session: connect to ``/ws``; in token mode send ``auth.request`` and wait for ``auth.success``;
send ``agent.register`` (with ``inFlightJobs``) and wait for ``register.ack``; then send ``config.ack``,
replay the outbox (after an ``agent.log`` gap marker when reconnecting), send ``heartbeat`` every
``heartbeat_interval_s`` and hand ``job.dispatch``/``job.cancel`` to the handler. WebSocket pings are
answered by the library. When a session ends the agent reconnects with exponential backoff and jitter;
an ``auth.failure`` message or a close with code 4010 stops it for good (spec §3.6, §3.7).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import platform as platform_mod
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from kici_core.errors import AuthError
from kici_core.jsontypes import JSONValue
from kici_runtime.agent import config as config_mod
from kici_runtime.agent.config import AGENT_VERSION, PROTOCOL_VERSION, AgentConfig
from kici_runtime.agent.outbox import Message, Outbox

log = logging.getLogger("kici.agent")

WS_MAX_PAYLOAD_BYTES = 26214400
CLOSE_AUTH_FAILED = 4010


class AuthRejected(AuthError):
    """The orchestrator refused the agent's credentials; the agent stops reconnecting."""


class _SessionEnded(Exception):
    pass


class Handler(Protocol):
    """What the connection hands inbound orchestrator messages to."""

    def on_dispatch(self, message: dict[str, Any]) -> None:
        """A ``job.dispatch`` arrived."""

    def on_cancel(self, message: dict[str, Any]) -> None:
        """A ``job.cancel`` arrived."""


def backoff_delay(attempt: int, *, base_s: float, max_s: float, jitter: float) -> float:
    """``min(base × 1.5^attempt × (1 + jitter), max)`` with ``jitter`` in ``[0, 0.5)`` (spec §3.7)."""
    return float(min(base_s * (1.5 ** min(attempt, 64)) * (1 + jitter), max_s))


def _now_ms() -> int:
    return int(time.time() * 1000)


def host_facts() -> dict[str, JSONValue]:
    """Optional ``agent.register`` metadata about the machine (best effort)."""
    facts: dict[str, JSONValue] = {
        "osRelease": platform_mod.release(),
        "osVersion": platform_mod.version(),
        "cpuCount": os.cpu_count() or 1,
    }
    try:
        facts["totalMemoryMb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        facts["runningAsUser"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    if hasattr(os, "getuid"):
        facts["runningAsUid"] = os.getuid()
    return facts


class Connection:
    """Keeps one orchestrator session alive until :meth:`close`."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        outbox: Outbox,
        handler: Handler,
        in_flight: Callable[[], list[JSONValue]],
        jitter: Callable[[], float] = lambda: random.random() * 0.5,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._handler = handler
        self._in_flight = in_flight
        self._jitter = jitter
        self._ws: ClientConnection | None = None
        self._lock = anyio.Lock()
        self._stopping = anyio.Event()
        self._offline_since: float | None = None
        self.attempt = 0
        self.registered = False
        self.sessions = 0
        self._rejected: AuthRejected | None = None

    async def run(self) -> None:
        """Connect, serve, reconnect; returns after :meth:`close`.

        Raises:
            AuthRejected: the orchestrator sent ``auth.failure`` or closed with 4010.
        """
        while not self._stopping.is_set():
            try:
                await self._session()
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed, _SessionEnded) as exc:
                if self._stopping.is_set():
                    break
                log.warning("orchestrator connection lost: %s", exc or type(exc).__name__)
            finally:
                self.registered = False
                self._ws = None
                if self._offline_since is None:
                    self._offline_since = time.monotonic()
            if self._stopping.is_set():
                break
            delay = backoff_delay(
                self.attempt,
                base_s=self._config.reconnect_base_delay_s,
                max_s=self._config.reconnect_max_delay_s,
                jitter=self._jitter(),
            )
            self.attempt += 1
            log.info("reconnecting in %.1fs", delay)
            with anyio.move_on_after(delay):
                await self._stopping.wait()

    async def close(self) -> None:
        """Stop reconnecting and close the current socket with 1000."""
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            with anyio.move_on_after(5, shield=True):
                await ws.close(1000, "agent shutting down")

    async def _send(self, ws: ClientConnection, message: Message) -> None:
        async with self._lock:
            await ws.send(json.dumps(message, separators=(",", ":")))

    async def _receive(self, ws: ClientConnection) -> dict[str, Any]:
        while True:
            raw = await ws.recv()
            try:
                msg = json.loads(raw)
            except (ValueError, TypeError):
                log.warning("ignoring a malformed frame from the orchestrator")
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("type") == "auth.failure":
                raise AuthRejected(f"orchestrator rejected the agent: {msg.get('reason', 'no reason')}")
            return msg

    def _register_message(self) -> Message:
        cfg = self._config
        msg: Message = {
            "type": "agent.register",
            "messageId": f"register-{cfg.agent_id}-{_now_ms()}",
            "agentId": cfg.agent_id,
            "labels": config_mod.register_labels(cfg),
            "platform": cfg.platform,
            "arch": cfg.arch,
            "version": AGENT_VERSION,
            "maxConcurrency": cfg.max_concurrency,
            "hostname": cfg.hostname,
            **host_facts(),
        }
        in_flight = self._in_flight()
        if in_flight:
            msg["inFlightJobs"] = in_flight
        return msg

    async def _handshake(self, ws: ClientConnection) -> None:
        cfg = self._config
        with anyio.fail_after(cfg.handshake_timeout_s):
            if cfg.token is not None:
                await self._send(ws, {"type": "auth.request", "token": cfg.token, "protocolVersion": PROTOCOL_VERSION})
                reply = await self._receive(ws)
                if reply.get("type") != "auth.success":
                    raise _SessionEnded(f"expected auth.success, got {reply.get('type')!r}")
            await self._send(ws, self._register_message())
            while True:
                reply = await self._receive(ws)
                if reply.get("type") == "register.ack":
                    break
                log.debug("ignoring %r before register.ack", reply.get("type"))

    async def _session(self) -> None:
        cfg = self._config
        async with connect(
            cfg.url, max_size=WS_MAX_PAYLOAD_BYTES, open_timeout=cfg.handshake_timeout_s, close_timeout=5
        ) as ws:
            self._ws = ws
            try:
                await self._serve(ws)
            except ConnectionClosed as exc:
                self._check_close(exc)
                raise
            if self._rejected is not None:
                raise self._rejected
            if ws.close_code == CLOSE_AUTH_FAILED:
                raise AuthRejected(f"orchestrator closed the connection: {ws.close_reason or 'auth failed'}")
            raise _SessionEnded(f"closed with code {ws.close_code}")

    async def _serve(self, ws: ClientConnection) -> None:
        cfg = self._config
        await self._handshake(ws)
        self.sessions += 1
        self.attempt = 0
        self.registered = True
        log.info("registered with the orchestrator as %s", cfg.agent_id)
        await self._send(
            ws, {"type": "config.ack", "messageId": f"config-ack-{cfg.agent_id}-{_now_ms()}", "agentId": cfg.agent_id}
        )
        if self._offline_since is not None and len(self._outbox):
            await self._send(ws, self._gap_marker())
        self._offline_since = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats, ws)
            tg.start_soon(self._writer, ws)
            await self._reader(ws)
            tg.cancel_scope.cancel()

    def _check_close(self, exc: ConnectionClosed) -> None:
        if exc.rcvd is not None and exc.rcvd.code == CLOSE_AUTH_FAILED:
            raise AuthRejected(f"orchestrator closed the connection: {exc.rcvd.reason or 'auth failed'}") from exc

    def _gap_marker(self) -> Message:
        offline = int(time.monotonic() - (self._offline_since or time.monotonic()))
        text = (
            f"--- Orchestrator offline for {offline}s. Replaying {len(self._outbox)} buffered events "
            "and 0 buffered log lines."
        )
        if self._outbox.dropped:
            text += f" {self._outbox.dropped} events dropped due to buffer overflow."
        self._outbox.dropped = 0
        return {
            "type": "agent.log",
            "messageId": f"gap-{self._config.agent_id}-{_now_ms()}",
            "agentId": self._config.agent_id,
            "lines": [f"{text} ---"],
            "timestamp": _now_ms(),
        }

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            while True:
                msg = await self._receive(ws)
                kind = msg.get("type")
                if kind == "job.dispatch":
                    self._handler.on_dispatch(msg)
                elif kind == "job.cancel":
                    self._handler.on_cancel(msg)
                elif kind in ("heartbeat", "rate.limit.warning", "register.ack"):
                    continue
                elif kind == "error":
                    log.warning("orchestrator reported an error: %s", msg.get("message"))
                else:
                    log.debug("ignoring orchestrator message %r", kind)
        except ConnectionClosed:
            return
        except AuthRejected as exc:
            self._rejected = exc
            await ws.close(1000, "Auth failed")

    async def _writer(self, ws: ClientConnection) -> None:
        try:
            while True:
                msg = await self._outbox.peek()
                await self._send(ws, msg)
                self._outbox.mark_sent(msg)
        except ConnectionClosed:
            return

    async def _heartbeats(self, ws: ClientConnection) -> None:
        try:
            while True:
                await self._send(ws, {"type": "heartbeat", "timestamp": _now_ms()})
                await anyio.sleep(self._config.heartbeat_interval_s)
        except ConnectionClosed:
            return
