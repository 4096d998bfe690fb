"""Build every adapter from ``Settings`` and run the orchestrator: the one place where parts are wired.

``serve(settings)`` is what ``kici-standalone`` and ``kici-server`` run: database (embedded when configured),
migrations, stores, the HTTP app under uvicorn, and every background loop in one task group that stops cleanly
on SIGTERM/SIGINT/SIGHUP (decision 15).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from kici_adapters import metrics
from kici_adapters.agents.endpoint import AgentEndpoint
from kici_adapters.github.provider import GitHubProvider
from kici_adapters.postgres import migrate, notify
from kici_adapters.postgres.checks import PgCheckOutbox
from kici_adapters.postgres.cluster import PgCluster
from kici_adapters.postgres.concurrency import PgConcurrency
from kici_adapters.postgres.dispatch import PgDispatchQueue
from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.outbox import PgPlatformOutbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.retention import PgRetention
from kici_adapters.postgres.runs import PgRunStore
from kici_adapters.postgres.secrets import rotate_key
from kici_adapters.postgres.stores import PgDeliveryInbox, PgSourceStore, PgTokenStore
from kici_core import errors
from kici_core.dispatch_effects import DispatcherConfig
from kici_core.dispatch_records import DispatchRow
from kici_core.jsontypes import JSONObject
from kici_core.ports import BlobStore
from kici_runtime import logging as kici_logging
from kici_runtime.config.settings import Settings
from kici_runtime.orchestrator import (
    agent_sockets,
    bootstrap,
    components,
    dashboard,
    heap,
    httpguard,
    platform_link,
    processing,
    shutdown,
)
from kici_runtime.orchestrator.admin import api as admin_api
from kici_runtime.orchestrator.admin import cluster as admin_cluster
from kici_runtime.orchestrator.admin import runs as admin_runs
from kici_runtime.orchestrator.admin import workflows as admin_workflows
from kici_runtime.orchestrator.app import build_app
from kici_runtime.orchestrator.check_sender import CheckSender
from kici_runtime.orchestrator.cluster import ClusterMember
from kici_runtime.orchestrator.context import AppContext
from kici_runtime.orchestrator.dispatcher import AgentHub
from kici_runtime.orchestrator.retention import RetentionSweeper
from kici_runtime.orchestrator.scaler import service as scaler_service
from kici_runtime.orchestrator.scaler import startup as scaler_startup
from kici_runtime.orchestrator.scheduler import ScheduleLoop
from kici_runtime.orchestrator.worker import DeliveryWorker
from kici_runtime.version import VERSION

log = logging.getLogger("kici.runtime")


@dataclass(slots=True)
class Orchestrator:
    """Everything a running orchestrator process holds."""

    settings: Settings
    db: Database
    ctx: AppContext
    app: Starlette
    worker: DeliveryWorker
    github: GitHubProvider
    background: list[Callable[[], Any]] = field(default_factory=list)
    platform_outbox: PgPlatformOutbox | None = None  # platform/hybrid only (kici_runtime.orchestrator.platform_link)
    agents: AgentHub | None = (
        None  # --- agent dispatch (kici_runtime.orchestrator.dispatcher): the /ws hub and its loops
    )
    agent_endpoint: AgentEndpoint | None = None
    scaler: scaler_service.ScalerService | None = None  # --- container auto-scaler (kici_runtime.orchestrator.scaler)
    scheduler: ScheduleLoop | None = None  # --- schedules: fires registered schedule triggers (one process at a time)
    cluster: ClusterMember | None = None  # --- several processes on one database (kici_runtime.orchestrator.cluster)
    retention: RetentionSweeper | None = None


async def _database_url(settings: Settings, stack: AsyncExitStack) -> str:
    if not settings.embedded_database:
        assert settings.database_url is not None
        return settings.database_url.reveal()
    pg = EmbeddedPostgres(components.data_root(settings) / "postgres")

    def stop() -> None:
        if pg.owned:
            pg.stop()
            log.info("Embedded PostgreSQL stopped")

    # Registered first: a start that fails or is interrupted still stops what it started. A start refused
    # because another process owns the database changes nothing, and neither does this stop.
    stack.callback(stop)
    url = await anyio.to_thread.run_sync(pg.start)
    log.info(
        f"Embedded PostgreSQL started in {pg.cluster_dir}",
        extra={"dataDir": str(pg.data_dir), "clusterDir": str(pg.cluster_dir)},
    )
    return url


@asynccontextmanager
async def orchestrator(settings: Settings, extra_routes: list[BaseRoute] | None = None) -> AsyncIterator[Orchestrator]:
    """Open every adapter for ``settings``; closes them on exit."""
    async with AsyncExitStack() as stack:
        # --- container auto-scaler: its start-up checks refuse boot before anything else is opened
        scaling = None
        if settings.scaler_config_path:
            scaling = await scaler_startup.from_settings(
                settings.scaler_config_path, settings.scaler_config_dir, env=os.environ
            )
            stack.push_async_callback(scaling.aclose)
        url = await _database_url(settings, stack)
        if settings.auto_migrate:
            applied = await migrate.apply_migrations_async(url)
            log.info(f"Applied {len(applied)} migration(s)" if applied else "Database schema is up to date")
        else:
            log.info("Auto-migrate disabled (KICI_AUTO_MIGRATE=false)")
        db = Database(url)
        await db.open()
        stack.push_async_callback(db.close)
        log.info("Database connected")
        notifier = notify.InboxNotifier(url) if settings.processing_workers > 0 else None
        parts = await components.processing_parts(
            settings,
            db,
            stack,
            worker_id=components.instance_id(settings),
            on_accepted=notifier.wake if notifier is not None else None,
        )
        secrets, sources, github, worker, inbox = parts.secrets, parts.sources, parts.github, parts.worker, parts.inbox
        blobs, platform_outbox = parts.blobs, parts.platform_outbox
        tokens = PgTokenStore(db)

        # --- agent dispatch: the /ws endpoint, the dispatcher driver and admin run routes
        runs = PgRunStore(db, forward=settings.platform_enabled, instance_id=components.instance_id(settings))
        concurrency = PgConcurrency(db)
        hub, endpoint = _agent_parts(settings, db, sources, github, runs=runs, concurrency=concurrency)
        # --- cluster membership, dead-process recovery and retention (kici_runtime.orchestrator.cluster / .retention)
        member, sweeper, view = _cluster_parts(settings, db, hub, blobs)
        extra_routes = [
            endpoint.route("/ws"),
            *admin_runs.routes(hub, runs=runs, concurrency=concurrency, directory=view.directory),
            *admin_cluster.routes(view),
            *(extra_routes or []),
            *dashboard.routes(hub, db, runs=runs, secret_key=settings.secret_key),
        ]
        wake = notifier.wake if notifier is not None else worker.wake
        # --- schedules and manual runs: deliveries the orchestrator makes itself
        scheduler = ScheduleLoop(
            store=parts.registrations, inbox=inbox, wake=wake, db=db, instance_id=components.instance_id(settings)
        )
        extra_routes += admin_workflows.routes(
            store=parts.registrations, pipeline=parts.pipeline, inbox=inbox, wake=wake
        )

        ctx = AppContext(
            mode=settings.mode,
            sources=sources,
            secrets=secrets,
            inbox=inbox,
            event_log=inbox,
            base_path=settings.base_path,
            version=VERSION,
            build_commit=settings.build_commit,
            wake_worker=wake,
            check_database=inbox.ready,
            tokens=tokens,
            blobs=blobs,
            max_body_bytes=settings.http_max_body_bytes,
            generic_max_body_bytes=settings.generic_webhook_max_body_bytes,
            body_timeout=settings.http_body_timeout_ms / 1000,
            unverified_rpm=settings.webhook_unverified_rpm,
            local_sources_enabled=settings.allow_local_sources,
        )
        ctx.kick_agent_token = endpoint.kick_token
        ctx.release_agent = hub.queue.release_agent
        await _wire_admin(ctx, settings, stack, db, url, tokens)
        app = build_app(ctx, [*admin_api.routes, *extra_routes])
        if notifier is None:  # deliveries are processed here
            background: list[Callable[[], Any]] = [worker.run, parts.offloader.run]
        else:  # ... or in child processes, woken through NOTIFY kici_inbox
            supervisor = processing.Supervisor(settings, database_url=url)
            ctx.metric_snapshots = supervisor.metric_snapshots
            background = [notifier.run, supervisor.run, functools.partial(_release_own_leases, inbox, worker)]
        # --- GitHub check runs: every process sends what is due (rows are leased, never sent twice at once)
        checks = CheckSender(
            outbox=PgCheckOutbox(db),
            sources=sources,
            github=github,
            worker_id=components.instance_id(settings),
            dashboard_url=settings.dashboard_url,
            mask=kici_logging.mask,
        )
        background.append(checks.run)
        background.append(scheduler.run)
        background += [member.run, sweeper.run]
        scaler = None
        if scaling is not None:  # --- container auto-scaler: hooked into the hub, its loop in the background
            scaler = scaler_service.attach(
                scaling,
                db=db,
                tokens=tokens,
                hub=hub,
                token_ttl_s=settings.agent_token_ttl_ms / 1000,
                orchestrator_url=settings.orchestrator_url or f"ws://127.0.0.1:{settings.port}/ws",
                forwarded_env=os.environ,
                instance_id=components.instance_id(settings),
            )
            background.append(scaler.run)
        yield Orchestrator(
            settings=settings,
            db=db,
            ctx=ctx,
            app=app,
            worker=worker,
            github=github,
            platform_outbox=platform_outbox,
            agents=hub,
            agent_endpoint=endpoint,
            background=background,
            scaler=scaler,
            scheduler=scheduler,
            cluster=member,
            retention=sweeper,
        )


async def _release_own_leases(inbox: PgDeliveryInbox, worker: DeliveryWorker) -> None:
    """With processing children, this process no longer claims: free what it claimed before a restart."""
    try:
        released = await inbox.release_leases(worker.worker_id)
    except errors.Unavailable:
        return
    if released:
        log.info("Released deliveries claimed before a restart", extra={"count": released})


async def _wire_admin(
    ctx: AppContext, settings: Settings, stack: AsyncExitStack, db: Database, url: str, tokens: PgTokenStore
) -> None:
    """Give the admin API its operations (key rotation, migrations, GitHub checks) and the bootstrap token."""
    ctx.secret_key_configured = True  # settings refuse boot without a key (or KICI_DEV generates one)
    key, old_key = settings.secret_key, settings.secret_key_old

    async def rotate() -> int:
        return await rotate_key(db, old_key, key)

    ctx.rotate_key = rotate

    async def migrate_now() -> list[str]:
        return await migrate.apply_migrations_async(url)

    async def status_now() -> list[JSONObject]:
        return await admin_api.migration_status(url)

    ctx.migrate, ctx.migration_status = migrate_now, status_now
    if not settings.skip_github_source_validation:  # used only when `source add github --verify` asks
        http = httpx.AsyncClient(timeout=10.0)
        stack.push_async_callback(http.aclose)
        ctx.github_app_check = admin_api.github_app_check(http, settings.github_api_url)
    ctx.webhook_public_url = settings.webhook_public_url
    await bootstrap.ensure_bootstrap_token(
        tokens,
        settings.bootstrap_admin_token.reveal() if settings.bootstrap_admin_token else None,
        new_id=components.new_id,
    )


def _agent_parts(
    settings: Settings,
    db: Database,
    sources: PgSourceStore,
    github: GitHubProvider,
    *,
    runs: PgRunStore,
    concurrency: PgConcurrency,
) -> tuple[AgentHub, AgentEndpoint]:
    """The dispatcher driver (reporting to ``runs`` and ``concurrency``) and the /ws endpoint for ``settings``."""
    me = components.instance_id(settings)

    async def clone_token(row: DispatchRow) -> str | None:
        if row.provider != "github" or not row.routing_key or not row.repo_identifier:
            return None  # local sources are cloned from a file:// URL without a credential
        source = await sources.github_by_routing_key(row.routing_key)
        if source is None:
            raise errors.ConfigError(f"no GitHub source for {row.routing_key}")
        return await github.clone_token(source, row.repo_identifier)

    config = DispatcherConfig(
        ack_timeout=max(1.0, settings.dispatch_ack_timeout_ms / 1000),
        recovery_grace=2 * settings.agent_max_reconnect_delay_ms / 1000,
        stale_after=settings.job_heartbeat_interval_ms * settings.stale_detector_threshold_multiplier / 1000,
    )
    hub = AgentHub(
        queue=PgDispatchQueue(db),
        runs=runs,
        concurrency=concurrency,
        instance_id=me,
        config=config,
        clone_token=clone_token,
        sweep_seconds=settings.dispatch_sweep_interval_ms / 1000,
    )
    endpoint = AgentEndpoint(hub=hub, tokens=PgTokenStore(db), auth_mode=settings.agent_auth)
    return hub, endpoint


def _cluster_parts(
    settings: Settings, db: Database, hub: AgentHub, blobs: BlobStore
) -> tuple[ClusterMember, RetentionSweeper, admin_cluster.ClusterView]:
    """This process's cluster membership, the retention sweeper and what the cluster routes read."""
    me = components.instance_id(settings)
    timeout_s = settings.cluster.instance_timeout_ms / 1000
    directory = PgCluster(db, instance_timeout_s=timeout_s)
    member = ClusterMember(
        db=db,
        cluster=directory,
        instance_id=me,
        hub=hub,
        version=VERSION,
        mode=settings.mode,
        heartbeat_s=settings.cluster.heartbeat_interval_ms / 1000,
        recovery_grace_s=hub.config.recovery_grace,
    )
    sweeper = RetentionSweeper(
        db=db,
        store=PgRetention(db, blobs),
        policy=settings.retention,
        instance_id=me,
        interval_s=settings.retention_interval_ms / 1000,
    )
    view = admin_cluster.ClusterView(directory=directory, instance_id=me, instance_timeout_s=timeout_s, sweeper=sweeper)
    return member, sweeper, view


async def migrate_only(settings: Settings) -> None:
    """Apply the migrations (starting the embedded database when configured) and return."""
    async with AsyncExitStack() as stack:
        url = await _database_url(settings, stack)
        applied = await migrate.apply_migrations_async(url)
        log.info(f"Applied {len(applied)} migration(s)" if applied else "Database schema is up to date")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime's task group owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(
    app: Any, settings: Settings, *, port: int | None = None, graceful_shutdown: int = 30
) -> uvicorn.Config:
    """The uvicorn settings the orchestrator serves with: 25 MiB WebSocket frames, agent sockets compressed
    without context takeover and without keepalive pings (:mod:`kici_runtime.orchestrator.agent_sockets`), the header
    timeout of :mod:`kici_runtime.orchestrator.httpguard`."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=graceful_shutdown,
        ws_max_size=26_214_400,
        ws=agent_sockets.agent_websocket_protocol(),
        ws_ping_interval=None,
        http=httpguard.protocol_with_header_timeout(settings.http_header_timeout_ms / 1000),
    )


async def serve(settings: Settings, *, ready: Callable[[int], None] | None = None) -> None:
    """Run the orchestrator until SIGTERM, SIGINT or SIGHUP: HTTP server and background loops in one task group.

    The signals are handled until everything is closed again (see :mod:`kici_runtime.orchestrator.shutdown`): a signal
    during start-up stops what has started, and no later signal skips the clean-up.
    """
    stop = shutdown.Shutdown()
    failure: Exception | None = None
    with anyio.open_signal_receiver(*shutdown.STOP_SIGNALS) as signals:
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(stop.watch, signals)
            try:
                with stop.scope:
                    await _serve(settings, stop, ready)
            except Exception as exc:  # raised outside the task group, so that it is not wrapped in a group
                failure = exc
            watcher.cancel_scope.cancel()
    if failure is not None:
        raise failure
    metrics.platform_connection_status.set(0)


async def _serve(settings: Settings, stop: shutdown.Shutdown, ready: Callable[[int], None] | None) -> None:
    async with orchestrator(settings) as orch:
        server = _Server(server_config(orch.app, settings))

        async def drain(first: bool, name: str) -> None:
            if not first:
                log.info(f"{name} received again: closing open connections now")
                server.force_exit = True
                return
            log.info(f"Shutdown requested ({name}): draining HTTP requests and stopping background loops")
            if orch.agent_endpoint is not None:  # --- agents reconnect elsewhere/later (1001)
                await orch.agent_endpoint.close_all()
            server.should_exit = True

        try:
            async with anyio.create_task_group() as tg:
                for loop in orch.background:  # delivery worker and payload offloader, or processing children
                    tg.start_soon(loop)
                if orch.agents is not None:  # --- agent dispatch loops (LISTEN, poll, deadlines, sweeps, gauges)
                    tg.start_soon(orch.agents.run)

                async def run_http() -> None:
                    await server.serve()
                    tg.cancel_scope.cancel()

                async def announce() -> None:
                    while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                        await anyio.sleep(0.05)
                    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
                    label = "Orchestrator (standalone)" if settings.entry_point == "standalone" else "Orchestrator"
                    heap.settle()
                    if orch.scaler is not None and not settings.orchestrator_url:  # --- spawned agents dial this port
                        orch.scaler.orchestrator_url = f"ws://127.0.0.1:{port}/ws"
                    log.info(f"{label} started on port {port}")
                    if settings.platform_enabled:  # --- Platform relay client (platform/hybrid), once HTTP listens
                        tg.start_soon(
                            functools.partial(
                                platform_link.run_platform_link, settings, orch.ctx, orch.platform_outbox, orch.db
                            )
                        )
                    if ready is not None:
                        ready(port)

                stop.serving(drain)
                tg.start_soon(announce)
                tg.start_soon(run_http)
        finally:
            stop.stopping()
