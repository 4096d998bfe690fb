"""The scaler loop: snapshot from PostgreSQL and the engines, plan (kici_core.scaling), then spawn and remove.

A pass runs when a job is queued (``LISTEN kici_jobs``), when a local agent disconnects, and every
``interval`` seconds, and only in the process holding the scaler's advisory lock. Spawning a container:
record the row (the claim), mint an ephemeral agent token bound to the label set (expiry
``KICI_AGENT_TOKEN_TTL_MS``), make sure the image is there (per ``imagePullPolicy``), create and start the
container, and install its network rules. Any failure undoes what was done and records the engine's message
on the row and as the job's waiting reason; the job is tried again after ``retry_backoff`` seconds.
Removing one: stop and delete the container, delete its rules, revoke its token, close its row.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import anyio

from kici_adapters import metrics
from kici_adapters.containers.engine import EngineError, ManagedContainer
from kici_adapters.containers.nftables import NftablesUnavailable
from kici_adapters.containers.spec import container_spec
from kici_adapters.postgres import notify
from kici_adapters.postgres.pool import LOOP_ERRORS, Database
from kici_adapters.postgres.scaler import LiveContainer, PendingRow, PgScalerStore
from kici_adapters.postgres.tokens import PgTokenStore
from kici_core import errors, routing, scaling
from kici_core.token_records import AgentToken
from kici_runtime.orchestrator.dispatcher import AgentHub
from kici_runtime.orchestrator.scaler.startup import Engine, Prepared

__all__ = ["ScalerService", "attach"]

log = logging.getLogger("kici.scaler")


class SpawnFailed(Exception):
    """A spawn step failed; ``reason`` is the job's waiting reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ScalerService:
    """The auto-scaler of one orchestrator process.

    Args:
        prepared: what start-up built (configuration, engines, nft runner).
        db / store / tokens: PostgreSQL access.
        orchestrator_url: what spawned agents dial when a scaler has no ``orchestratorUrl``.
        token_ttl_s: lifetime of the ephemeral agent tokens.
        forwarded_env: the orchestrator's environment (``KICI_AGENT_ENV_*`` is passed on).
        instance_id: this process (recorded on the rows it creates).
        interval: seconds between passes without a wake-up.
        retry_backoff: seconds before a job whose spawn failed is tried again.
    """

    def __init__(
        self,
        prepared: Prepared,
        *,
        db: Database,
        tokens: PgTokenStore,
        orchestrator_url: str,
        token_ttl_s: float,
        forwarded_env: Mapping[str, str],
        instance_id: str,
        clock: Callable[[], float] = time.time,
        interval: float = 2.0,
        retry_backoff: float = 30.0,
        start_timeout: float = scaling.START_TIMEOUT,
    ) -> None:
        self.prepared = prepared
        self.config = prepared.config
        self._db = db
        self.store = PgScalerStore(db)
        self._tokens = tokens
        self.orchestrator_url = orchestrator_url
        self._ttl = token_ttl_s
        self._env = dict(forwarded_env)
        self._instance = instance_id
        self._clock = clock
        self._interval = interval
        self.retry_backoff = retry_backoff
        self._start_timeout = start_timeout
        started = clock()
        self._last_demand = {s.name: started for s in self.config.scalers}
        self._warm_retry: dict[str, float] = {}  # scaler -> when a failed warm-pool spawn may be retried
        self._wake = anyio.Event()
        self.passes = 0

    # ------------------------------------------------------------------------------------ hooks
    def wake(self) -> None:
        """Run a pass soon (a job was queued, an agent left)."""
        self._wake.set()

    def agent_gone(self, agent_id: str) -> None:
        """The dispatcher's disconnect hook: a container may be due for removal."""
        self._wake.set()

    async def lookup(self, agent_id: str) -> scaling.Binding | None:
        """The dispatcher's registration hook: the binding of an agent this scaler (any process) started."""
        live, job_id = await self.store.binding(agent_id)
        return scaling.Binding(bound_job_id=job_id) if live else None

    # ------------------------------------------------------------------------------------ loops
    async def run(self) -> None:
        """Restore state and remove orphans, then pass until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                await self._restore()
                while True:
                    try:
                        await self.pass_once()
                    except LOOP_ERRORS as exc:
                        log.warning("scaler pass skipped", extra={"error": str(exc)})
                    with anyio.move_on_after(self._interval):
                        await self._wake.wait()
                    self._wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await self.prepared.aclose()

    async def _listen(self) -> None:
        async for note in notify.listen_forever(
            self._db, (notify.JOBS,), retry_seconds=1.0, what="scaler notifications"
        ):
            if note is not None:
                self._wake.set()

    async def _restore(self) -> None:
        """Start-up (§7.1 step 6): rows whose container is gone are closed; containers labelled
        ``kici-managed=true`` without a live row are removed."""
        while True:
            try:
                async with self.store.singleton() as mine:
                    if not mine:
                        log.info("another orchestrator process runs the scaler; it removes orphans")
                        return
                    live = {c.agent_id: c for c in await self.store.live()}
                    removed = 0
                    seen: set[str] = set()
                    for engine in self._engines():
                        found = await engine.client.list_managed()
                        seen |= {c.name for c in found}
                        for container in found:
                            if container.name not in live and container.labels.get("kici-agent-id") not in live:
                                await self._remove_container(engine, container.id, None)
                                removed += 1
                    for agent_id, row in live.items():
                        if agent_id not in seen:
                            await self._close(row, "removed", "container gone after an orchestrator restart")
                    log.info(f"Cleaned up {removed} orphaned containers", extra={"restored": len(live)})
                    return
            except LOOP_ERRORS as exc:
                log.warning("scaler state restore failed; retrying", extra={"error": str(exc)})
                await anyio.sleep(self._interval)

    def _engines(self) -> list[Engine]:
        return list({id(e.client): e for e in self.prepared.engines.values()}.values())

    # ------------------------------------------------------------------------------------ one pass
    async def pass_once(self) -> scaling.Plan | None:
        """One planning pass under the advisory lock; the plan it ran (None when another process has the lock)."""
        async with self.store.singleton() as mine:
            if not mine:
                return None
            now = self._clock()
            rows, agents, live = await self.store.snapshot()
            states: dict[str, ManagedContainer] = {}
            for engine in self._engines():
                states.update({c.name: c for c in await engine.client.list_managed()})
            jobs = [job for row in rows if (job := self._job(row)) is not None]
            failures = await self.store.recent_failures([j.job_id for j in jobs], self.retry_backoff)
            plan = scaling.plan(
                self.config,
                now=now,
                jobs=jobs,
                agents=[
                    scaling.StaticAgent(
                        labels=routing.AgentLabels(
                            labels=frozenset(a.labels), mandatory_labels=frozenset(a.mandatory_labels)
                        ),
                        free_slots=a.free_slots,
                    )
                    for a in agents
                ],
                containers=[self._container(c, states.get(c.agent_id)) for c in live],
                last_demand=self._last_demand,
                blocked={j: f"{f.error} (retrying within {int(self.retry_backoff)} s)" for j, f in failures.items()},
                start_timeout=self._start_timeout,
            )
            for name in plan.demand:
                self._last_demand[name] = now
            by_id = {c.agent_id: c for c in live}
            for removal in plan.remove:
                await self._remove(by_id[removal.agent_id], removal.reason)
            reasons: dict[str, str | None] = dict(plan.waiting)
            for c in live:
                if c.bound_job_id is not None and c.agent_id not in {r.agent_id for r in plan.remove}:
                    reasons.setdefault(c.bound_job_id, _starting(c.agent_id, c.scaler))
            for spawn in plan.spawn:
                if spawn.job_id is None and self._warm_retry.get(spawn.scaler, now) > now:
                    continue  # the last warm-pool spawn of this scaler failed: wait before trying again
                ok, outcome = await self._spawn(spawn)
                if spawn.job_id is not None:
                    reasons[spawn.job_id] = outcome
                elif not ok:
                    self._warm_retry[spawn.scaler] = now + self.retry_backoff
                if not ok:  # the slot it was planned into is free: plan again at once (that job now waits)
                    self._wake.set()
            await self.store.set_reasons(
                {r.job_id: reasons.get(r.job_id) for r in rows if reasons.get(r.job_id) != r.reason}
            )
            self._gauges(live, plan)
            self.passes += 1
            return plan

    def _job(self, row: PendingRow) -> scaling.PendingJob | None:
        try:
            selector = routing.compile_selector(row.runs_on, row.exclude_labels)
        except errors.InvalidInput:
            return None  # the dispatcher fails such a job
        return scaling.PendingJob(job_id=row.job_id, run_id=row.run_id, selector=selector, created_at=row.created_at)

    def _container(self, row: LiveContainer, state: ManagedContainer | None) -> scaling.Container:
        phase: scaling.Phase
        if row.connected:
            phase = "busy" if row.busy else "idle"
        elif row.registered:
            phase = "disconnected"
        elif state is None or state.state in ("exited", "dead") or row.container_id is None:
            phase = "exited"
        else:
            phase = "starting"
        return scaling.Container(
            agent_id=row.agent_id,
            scaler=row.scaler,
            label_set=row.label_set,
            bound_job_id=row.bound_job_id,
            phase=phase,
            created_at=row.created_at,
        )

    def _gauges(self, live: list[LiveContainer], plan: scaling.Plan) -> None:
        gone = {r.agent_id for r in plan.remove}
        for scaler in self.config.scalers:
            mine = [c for c in live if c.scaler == scaler.name and c.agent_id not in gone]
            spawned = [s for s in plan.spawn if s.scaler == scaler.name]
            metrics.scaler_containers.labels(scaler=scaler.name, state="starting").set(
                sum(1 for c in mine if not c.connected) + len(spawned)
            )
            metrics.scaler_containers.labels(scaler=scaler.name, state="running").set(
                sum(1 for c in mine if c.connected)
            )

    # ------------------------------------------------------------------------------------ spawn
    async def _spawn(self, spawn: scaling.Spawn) -> tuple[bool, str | None]:
        """Start one container; whether it started, and the bound job's waiting reason afterwards."""
        scaler = self.config.scaler(spawn.scaler)
        assert scaler is not None
        engine = self.prepared.engines[scaler.name]
        label_set = scaler.label_sets[spawn.label_set]
        agent_id = f"kici-{scaler.name}-{uuid.uuid4().hex[:8]}"
        if not await self.store.claim(
            agent_id=agent_id,
            scaler=scaler.name,
            label_set=spawn.label_set,
            labels=label_set.labels,
            job_id=spawn.job_id,
            run_id=spawn.run_id,
            instance_id=self._instance,
        ):
            return False, None
        started = time.perf_counter()
        container_id: str | None = None
        ip: str | None = None
        token_id: str | None = None
        try:
            token, token_id = await self._mint(agent_id, scaler, label_set)
            await self.store.update(agent_id, token_id=token_id)
            await self._ensure_image(engine, label_set)
            body = container_spec(
                scaler,
                spawn.label_set,
                agent_id=agent_id,
                token=token,
                orchestrator_url=scaler.orchestrator_url or self.orchestrator_url,
                job_id=spawn.job_id,
                run_id=spawn.run_id,
                socket_path=engine.socket_path,
                forwarded_env=self._env,
            )
            try:
                container_id = await engine.client.create(agent_id, body)
                await self.store.update(agent_id, container_id=container_id)
                await engine.client.start(container_id)
                info = await engine.client.inspect(container_id)
            except EngineError as exc:
                raise SpawnFailed(f"container spawn failed: {exc.message}") from None
            if scaler.network_isolation and self.prepared.nft is not None:
                ip = info.ip if info is not None else None
                if ip is None:
                    raise SpawnFailed(f"container spawn failed: no address on the isolated network for {agent_id}")
                await self.store.update(agent_id, container_ip=ip)
                try:
                    await self.prepared.nft.add_container(
                        ip, allowlist=label_set.allowlist, deny_all=label_set.deny_all
                    )
                except (OSError, NftablesUnavailable) as exc:
                    raise SpawnFailed(f"container spawn failed: network rules: {exc}") from None
            await self.store.update(agent_id, state="running")
        except SpawnFailed as exc:
            metrics.scaler_spawn_failures.labels(
                scaler=scaler.name, reason="image" if exc.reason.startswith("image ") else "spawn"
            ).inc()
            log.warning(
                "Scaler container spawn failed",
                extra={"scaler": scaler.name, "agentId": agent_id, "jobId": spawn.job_id, "error": exc.reason},
            )
            await self._undo(engine, agent_id, container_id, ip, token_id)
            await self.store.update(agent_id, state="failed", error=exc.reason)
            return False, exc.reason
        metrics.scaler_spawn_duration.labels(scaler=scaler.name).observe(time.perf_counter() - started)
        log.info(
            "Scaler container started",
            extra={"scaler": scaler.name, "agentId": agent_id, "jobId": spawn.job_id, "image": label_set.image},
        )
        return True, _starting(agent_id, scaler.name)

    async def _mint(self, agent_id: str, scaler: scaling.ScalerSpec, label_set: scaling.LabelSet) -> tuple[str, str]:
        text = "kat_" + secrets.token_hex(32)
        now = datetime.now(UTC)
        token = AgentToken(
            id=str(uuid.uuid4()),
            token_prefix=text[:12],
            labels=label_set.labels,
            mandatory_labels=scaler.mandatory_labels,
            agent_type="ephemeral",
            created_by=agent_id,
            created_at=now,
            expires_at=now + timedelta(seconds=self._ttl),
        )
        created = await self._tokens.create_agent_token(token, hashlib.sha256(text.encode()).hexdigest())
        return text, created.id

    async def _ensure_image(self, engine: Engine, label_set: scaling.LabelSet) -> None:
        image, policy = label_set.image, label_set.pull_policy
        try:
            present = await engine.client.image_exists(image)
            if present and policy != "Always":
                return
            if policy == "Never":
                raise SpawnFailed(f"image {image} missing: not on the container engine and imagePullPolicy is Never")
            try:
                await engine.client.pull(image)
            except EngineError as exc:
                if present:  # Always, but the registry is unreachable: the local copy still runs
                    log.warning("image pull failed; using the local copy", extra={"image": image, "error": exc.message})
                    return
                raise SpawnFailed(f"image {image} missing and the pull failed: {exc.message}") from None
        except EngineError as exc:
            raise SpawnFailed(f"container spawn failed: {exc.message}") from None

    async def _undo(
        self, engine: Engine, agent_id: str, container_id: str | None, ip: str | None, token_id: str | None
    ) -> None:
        if container_id is not None:
            await self._remove_container(engine, container_id, ip)
        if token_id is not None:
            await self._revoke(token_id)

    # ------------------------------------------------------------------------------------ remove
    async def _remove(self, row: LiveContainer, reason: str) -> None:
        engine = self.prepared.engines.get(row.scaler)
        engines = [engine] if engine is not None else self._engines()
        for each in engines:
            await self._remove_container(each, row.container_id or row.agent_id, row.container_ip)
        await self._close(row, "removed", reason)
        log.info("Scaler container removed", extra={"scaler": row.scaler, "agentId": row.agent_id, "reason": reason})

    async def _close(self, row: LiveContainer, state: str, reason: str) -> None:
        if row.token_id is not None:
            await self._revoke(row.token_id)
        await self.store.update(row.agent_id, state=state, error=reason)

    async def _remove_container(self, engine: Engine, container_id: str, ip: str | None) -> None:
        """Best effort: a container that will not go is an orphan for the next start-up."""
        try:
            await engine.client.stop(container_id)
            await engine.client.remove(container_id)
        except EngineError as exc:
            log.warning("could not remove a scaler container", extra={"container": container_id, "error": exc.message})
        if ip is not None and self.prepared.nft is not None:
            await self.prepared.nft.remove_container(ip)

    async def _revoke(self, token_id: str) -> None:
        try:
            await self._tokens.revoke_agent_token(token_id)
        except errors.Unavailable as exc:
            log.warning("could not revoke a scaler agent token", extra={"tokenId": token_id, "error": str(exc)})


def _starting(agent_id: str, scaler: str) -> str:
    return f"container {agent_id} (scaler {scaler}) starting for this job"


def attach(
    prepared: Prepared,
    *,
    db: Database,
    tokens: PgTokenStore,
    hub: AgentHub,
    orchestrator_url: str,
    token_ttl_s: float,
    forwarded_env: Mapping[str, str],
    instance_id: str,
) -> ScalerService:
    """Build the service and hook it into the dispatcher (registration binding, disconnect wake-up)."""
    service = ScalerService(
        prepared,
        db=db,
        tokens=tokens,
        orchestrator_url=orchestrator_url,
        token_ttl_s=token_ttl_s,
        forwarded_env=forwarded_env,
        instance_id=instance_id,
    )
    hub.scaler_lookup = service.lookup
    hub.on_agent_gone = service.agent_gone
    return service
