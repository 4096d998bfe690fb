"""The Platform relay client: one outbound WebSocket, authenticated, re-established forever with backoff.

States (spec §2.2): ``disconnected`` → ``connecting`` → ``authenticating`` (``auth.request`` sent) →
``authenticated`` (``auth.success`` received); any close returns to ``disconnected`` and schedules a reconnect
after ``protocol.reconnect_delay`` (the attempt counter resets only on ``auth.success``).

While authenticated the client runs, in one task group per connection:

* the reader: ``source.register.ack``, chunked ``webhook.relay.start``/``.chunk`` reassembly (a legacy
  single-frame ``webhook.relay`` is refused), ``dashboard.*`` refusals; bad frames are ignored, never fatal;
* one task per reassembled delivery: the runtime's handler verifies and durably accepts it, then the client
  sends ``webhook.ack`` (ack after acceptance: decision 2);
* heartbeats every 30 s (plus WebSocket pings, a missing pong closes the link);
* the outbox drainer, started once ``source.register`` was acknowledged (or 5 s later);
* the source watcher, which re-registers when the source list changes (polled, or at once on
  :meth:`PlatformClient.sources_changed`).

The client knows nothing of stores: sources, deliveries and the outbox come in as callables and protocols.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from kici_adapters import metrics
from kici_adapters.platform import messages, protocol
from kici_adapters.platform.outbox import Confirm, SendFrame
from kici_adapters.platform.protocol import AckResult, PlatformSource, RelayedDelivery
from kici_core import errors
from kici_core.jsontypes import JSONObject

log = logging.getLogger("kici.platform")

State = Literal["disconnected", "connecting", "authenticating", "authenticated"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AckDecision:
    """What to answer a relayed delivery with."""

    result: AckResult
    reason: str | None = None
    duplicate: bool = False


DeliveryHandler = Callable[[RelayedDelivery, "str | None"], Awaitable[AckDecision]]
"""``(delivery, platform_org_id) -> decision``: verify, accept durably, decide the ack. Must not raise."""

SourceLister = Callable[[], Awaitable[Sequence[PlatformSource]]]
"""The routing keys to announce, read fresh each time."""


class Outbox(Protocol):
    """What the client needs from the durable outbox (``PgPlatformOutbox`` / ``MemoryPlatformOutbox``)."""

    async def drain(self, send: SendFrame, confirm: Confirm) -> int: ...

    async def wait(self, poll_seconds: float) -> None: ...

    async def trim(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Connection settings; the defaults are the protocol's values (tests shorten the intervals). ``version`` is
    the orchestrator's release, sent in ``register``."""

    url: str
    token: str
    mode: str = "platform"
    version: str
    instance_id: str | None = None
    heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL_SECONDS
    ping_interval: float = 30.0
    ping_timeout: float = 60.0
    auth_timeout: float = protocol.AUTH_TIMEOUT_SECONDS
    open_timeout: float = 10.0
    reassembly_ttl: float = protocol.REASSEMBLY_TTL_SECONDS
    register_ack_timeout: float = 5.0
    source_poll_interval: float = 10.0
    outbox_poll_interval: float = 1.0
    trim_interval: float = 5.0
    max_delay_ms: float = protocol.MAX_DELAY_MS
    delivery_timeout: float = 10.0


class _LinkDown(Exception):
    """The socket closed (or stopped answering pings) while a task was using it."""


def _dumps(frame: JSONObject) -> str:
    return json.dumps(frame, separators=(",", ":"))


class PlatformClient:
    """See the module docstring. ``run()`` returns only when cancelled."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        handler: DeliveryHandler,
        sources: SourceLister,
        outbox: Outbox | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._handler = handler
        self._sources = sources
        self._outbox = outbox
        self._jitter = jitter
        self._sources_changed = anyio.Event()
        self._reassembly = protocol.Reassembly(ttl=config.reassembly_ttl)
        self._registered: list[PlatformSource] = []
        self.state: State = "disconnected"
        self.attempts = 0
        self.org_id: str | None = None
        self.org_public_alias: str | None = None
        self.delays: list[float] = []
        """Every reconnect delay chosen, in order (for diagnostics and tests)."""
        self.sessions = 0
        """How many times the link reached ``authenticated``."""
        self.accepted_keys: frozenset[str] = frozenset()
        """Routing keys the Platform accepted in its latest ``source.register.ack``."""
        self.heartbeats_sent = 0
        self._state_changed = anyio.Event()

    # ------------------------------------------------------------------------------ public
    def sources_changed(self) -> None:
        """Re-read the sources now and tell the Platform what changed (call after admin edits)."""
        self._sources_changed.set()

    async def wait_for(self, state: State, *, sessions: int = 0) -> None:
        """Return once the client is in ``state`` (and has authenticated at least ``sessions`` times)."""
        await self.wait_until(lambda: self.state == state and self.sessions >= sessions)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked whenever the client's observable state changes
        (state, sessions, delays, accepted keys, heartbeats)."""
        while not predicate():
            await self._state_changed.wait()

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; until cancelled. Trims the outbox meanwhile."""
        try:
            async with anyio.create_task_group() as tg:
                if self._outbox is not None:
                    tg.start_soon(self._trim_loop, self._outbox)
                while True:
                    await self._session()
                    delay = protocol.reconnect_delay(
                        self.attempts, self._jitter(), max_delay_ms=self.config.max_delay_ms
                    )
                    self.attempts += 1
                    self.delays.append(delay)
                    self._notify()
                    metrics.platform_connection_status.set(0)
                    log.info(
                        "Platform link down; reconnecting",
                        extra={"delaySeconds": round(delay, 3), "attempt": self.attempts},
                    )
                    await anyio.sleep(delay)
        finally:
            self._set_state("disconnected")
            metrics.platform_connection_status.set(0)

    # ------------------------------------------------------------------------------ one connection
    def _set_state(self, state: State) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        changed, self._state_changed = self._state_changed, anyio.Event()
        changed.set()

    async def _session(self) -> None:
        cfg = self.config
        self._set_state("connecting")
        ws: ClientConnection | None = None
        try:
            ws = await connect(
                cfg.url,
                max_size=protocol.WS_MAX_PAYLOAD_BYTES,
                open_timeout=cfg.open_timeout,
                ping_interval=cfg.ping_interval,
                ping_timeout=cfg.ping_timeout,
                close_timeout=5,
            )
            await ws.send(_dumps(messages.auth_request(cfg.token)))
            self._set_state("authenticating")
            if not await self._authenticate(ws):
                return
            await self._serve(ws)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed, _LinkDown) as exc:
            log.warning("Platform connection failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        finally:
            self._reassembly.clear()
            metrics.platform_connection_status.set(0)
            self._set_state("disconnected")
            if ws is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await ws.close(1000, "Client disconnect")

    async def _authenticate(self, ws: ClientConnection) -> bool:
        with anyio.move_on_after(self.config.auth_timeout):
            while True:
                frame = protocol.parse_frame(await ws.recv())
                if frame is None:
                    continue
                if frame["type"] == "auth.failure":
                    reason = frame.get("reason")
                    log.error("Platform refused the orchestrator token", extra={"reason": str(reason)})
                    await ws.close(1000, "Auth failed")
                    return False
                if frame["type"] == "auth.success":
                    org = frame.get("orgId")
                    self.org_id = org if isinstance(org, str) and org else None
                    alias = frame.get("orgPublicAlias")
                    if isinstance(alias, str) and alias:
                        self.org_public_alias = alias
                    self.attempts = 0
                    self.sessions += 1
                    metrics.platform_connection_status.set(1)
                    self._set_state("authenticated")
                    log.info(
                        "Platform link authenticated",
                        extra={"orgId": self.org_id, "connectionId": frame.get("connectionId")},
                    )
                    return True
        log.warning("Platform did not answer auth.request in time; closing")
        await ws.close(1000, "Auth timeout")
        return False

    async def _serve(self, ws: ClientConnection) -> None:
        registered = anyio.Event()
        try:
            self._registered = list(await self._sources())
        except errors.KiciError as exc:
            log.warning("could not read sources; announcing the last known list", extra={"error": str(exc)})
        await self._send(
            ws,
            messages.source_register(
                self._new_id(),
                self._registered,
                mode=self.config.mode,
                version=self.config.version,
                instance_id=self.config.instance_id,
            ),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._guard, tg, self._heartbeats(ws))
            tg.start_soon(self._guard, tg, self._watch_sources(ws))
            if self._outbox is not None:
                tg.start_soon(self._guard, tg, self._drain(ws, self._outbox, registered))
            await self._guard(tg, self._read(ws, tg, registered))
            tg.cancel_scope.cancel()

    async def _guard(self, tg: TaskGroup, work: Awaitable[None]) -> None:
        """Run one connection task; a dead link ends the whole connection instead of raising out of it."""
        try:
            await work
        except (ConnectionClosed, _LinkDown, OSError) as exc:
            log.info("Platform link closed", extra={"error": f"{type(exc).__name__}: {exc}"})
        except Exception:  # a bug in one task: drop this connection and reconnect rather than stop the client
            log.exception("Platform connection task failed; reconnecting")
        tg.cancel_scope.cancel()

    async def _send(self, ws: ClientConnection, frame: JSONObject) -> None:
        await ws.send(_dumps(frame))

    async def _confirm(self, ws: ClientConnection) -> None:
        """Wait for a pong to a fresh ping: every frame sent before it has reached the Platform."""
        pong = await ws.ping()
        with anyio.move_on_after(self.config.ping_timeout):
            await pong
            return
        raise _LinkDown("no pong from the Platform")

    # ------------------------------------------------------------------------------ tasks
    async def _read(self, ws: ClientConnection, tg: TaskGroup, registered: anyio.Event) -> None:
        while True:
            raw = await ws.recv()
            frame = protocol.parse_frame(raw)
            if frame is None:
                log.warning("ignoring a Platform frame that is not a JSON message")
                continue
            mtype = frame["type"]
            now = anyio.current_time()
            if mtype == "webhook.relay.start":
                rejected = self._reassembly.start(frame, now)
                if rejected is not None:
                    await self._reject(ws, rejected)
            elif mtype == "webhook.relay.chunk":
                done = self._reassembly.chunk(frame, now)
                if isinstance(done, protocol.Reject):
                    await self._reject(ws, done)
                elif done is not None:
                    tg.start_soon(self._deliver, ws, done)
            elif mtype == "source.register.ack":
                self._log_register_ack(frame)
                registered.set()
            elif mtype == "source.deregister.ack":
                log.info("Platform removed routing keys", extra={"removed": frame.get("removed")})
            elif mtype == "webhook.relay":
                log.warning("refusing a single-frame webhook.relay: only chunked relays are verified")
            else:
                reply = messages.dashboard_unsupported(frame)
                if reply is not None:
                    await self._send(ws, reply)
                else:
                    log.debug("ignoring Platform message", extra={"messageType": mtype})

    def _log_register_ack(self, frame: JSONObject) -> None:
        accepted = frame.get("accepted")
        rejected = frame.get("rejected")
        keys = [a.get("routingKey") for a in accepted if isinstance(a, dict)] if isinstance(accepted, list) else []
        self.accepted_keys = frozenset(k for k in keys if isinstance(k, str))
        self._notify()
        log.info("Platform accepted routing keys", extra={"routingKeys": keys})
        if isinstance(rejected, list) and rejected:
            log.warning("Platform rejected routing keys", extra={"rejected": rejected})

    async def _reject(self, ws: ClientConnection, rejected: protocol.Reject) -> None:
        log.warning(
            "relayed webhook stream refused", extra={"messageId": rejected.message_id, "reason": rejected.reason}
        )
        await self._send(
            ws,
            messages.webhook_ack(rejected.message_id, rejected.delivery_id, "rejected_misconfigured", rejected.reason),
        )

    async def _deliver(self, ws: ClientConnection, delivery: RelayedDelivery) -> None:
        start = delivery.start
        decision = AckDecision(result="rejected_misconfigured", reason="orchestrator threw during verify+process")
        # Shielded: once the durable acceptance began it finishes even if the link drops meanwhile.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.delivery_timeout):
            try:
                decision = await self._handler(delivery, self.org_id)
            except Exception:  # the handler must not raise; if it does the Platform still gets an answer
                log.exception("relayed delivery handler failed", extra={"deliveryId": start.delivery_id})
        try:
            await self._send(
                ws,
                messages.webhook_ack(
                    start.message_id, start.delivery_id, decision.result, decision.reason, duplicate=decision.duplicate
                ),
            )
        except ConnectionClosed:
            log.warning("webhook.ack lost: the Platform link closed", extra={"deliveryId": start.delivery_id})

    async def _heartbeats(self, ws: ClientConnection) -> None:
        while True:
            await anyio.sleep(self.config.heartbeat_interval)
            await self._send(ws, messages.heartbeat(int(time.time() * 1000)))
            self.heartbeats_sent += 1
            self._notify()

    async def _drain(self, ws: ClientConnection, outbox: Outbox, registered: anyio.Event) -> None:
        with anyio.move_on_after(self.config.register_ack_timeout):
            await registered.wait()

        async def send(frame: JSONObject) -> None:
            await self._send(ws, frame)

        async def confirm() -> None:
            await self._confirm(ws)

        while True:
            try:
                sent = await outbox.drain(send, confirm)
                if sent:
                    log.debug("outbox drained", extra={"messages": sent})
            except errors.Unavailable as exc:
                log.warning("outbox unavailable", extra={"error": str(exc)})
            await outbox.wait(self.config.outbox_poll_interval)

    async def _watch_sources(self, ws: ClientConnection) -> None:
        while True:
            with anyio.move_on_after(self.config.source_poll_interval):
                await self._sources_changed.wait()
            self._sources_changed = anyio.Event()
            try:
                current = list(await self._sources())
            except errors.KiciError as exc:
                log.warning("could not read sources", extra={"error": str(exc)})
                continue
            diff = protocol.diff_sources(self._registered, current)
            if diff.empty:
                continue
            if diff.removed:
                await self._send(ws, messages.source_deregister(self._new_id(), diff.removed))
            if diff.changed or diff.send_empty_register:
                await self._send(
                    ws,
                    messages.source_register(
                        self._new_id(),
                        diff.changed,
                        mode=self.config.mode,
                        version=self.config.version,
                        instance_id=self.config.instance_id,
                    ),
                )
            self._registered = current
            log.info(
                "Platform sources updated",
                extra={"removed": list(diff.removed), "registered": [s.routing_key for s in diff.changed]},
            )

    async def _trim_loop(self, outbox: Outbox) -> None:
        while True:
            try:
                await outbox.trim()
            except errors.Unavailable as exc:
                log.warning("outbox trim failed", extra={"error": str(exc)})
            await anyio.sleep(self.config.trim_interval)

    @staticmethod
    def _new_id() -> str:
        return str(uuid.uuid4())
