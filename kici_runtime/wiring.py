"""Build every adapter from ``Settings`` and run the orchestrator: the one place where parts are wired.

``serve(settings)`` is what ``kici-standalone`` and ``kici-server`` run: database (embedded when configured),
migrations, stores, the HTTP app under uvicorn, and every background loop in one task group that stops cleanly
on SIGTERM/SIGINT (decision 15).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from kici_adapters.postgres.stores import PgDeliveryInbox, PgSourceStore, PgTokenStore
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from kici_adapters import localgit, metrics
from kici_adapters.github.lockfiles import LockfileCache
from kici_adapters.github.provider import GitHubProvider
from kici_adapters.platform.outbox import PgPlatformOutbox
from kici_adapters.postgres import migrate
from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.pool import Database
from kici_adapters.secrets import PgSecretStore
from kici_adapters.storage import FilesystemBlobStore, S3BlobStore
from kici_core import errors, lockfile, services
from kici_core.jsontypes import JSONValue
from kici_core.ports import BlobStore, GitHubSource, RepoSource, SecretStore
from kici_runtime.app import build_app
from kici_runtime.config import Settings
from kici_runtime.context import AppContext
from kici_runtime.worker import DeliveryWorker, PrometheusObserver

log = logging.getLogger("kici.runtime")

VERSION = "0.1.0"


class DisabledSecretStore:
    """Used when no ``KICI_SECRET_KEY`` is configured: secret reads find nothing, writes are refused."""

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        return None

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        raise errors.ConfigError("secrets subsystem disabled: set KICI_SECRET_KEY")

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        return 0


def data_root(settings: Settings) -> Path:
    """``KICI_DATA_DIR``, else ``/var/lib/kici`` when writable, else ``$XDG_STATE_HOME/kici``."""
    if settings.data_dir:
        return Path(settings.data_dir)
    system = Path("/var/lib/kici")
    if system.is_dir() and os.access(system, os.W_OK):
        return system
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kici"


def blob_store(settings: Settings) -> BlobStore:
    s = settings.storage
    if s.type == "s3":
        return S3BlobStore(s.log_bucket or s.bucket or "", prefix=s.prefix or "kici-logs/", region=s.region,
                           endpoint=s.endpoint, force_path_style=s.force_path_style)
    base = Path(settings.webhook_payload_dir) / "logs" if settings.webhook_payload_dir else (
        Path(s.fs_path) if s.fs_path else data_root(settings) / "cache" / "logs")
    return FilesystemBlobStore(base)


def _github_repo_url(source: RepoSource, repo: str, payload: Mapping[str, JSONValue]) -> str:
    repository = payload.get("repository")
    if isinstance(repository, Mapping):
        url = repository.get("clone_url")
        if isinstance(url, str) and url:
            return url
    base = "https://github.com"
    if isinstance(source, GitHubSource) and source.api_url and "/api/v3" in source.api_url:
        base = source.api_url.split("/api/v3")[0]
    return f"{base}/{repo}.git"


def _local_repo_url(source: RepoSource, repo: str, payload: Mapping[str, JSONValue]) -> str:
    return localgit.repo_url(source)


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
    platform_outbox: PgPlatformOutbox | None = None  # platform/hybrid only (kici_runtime.server)


async def _database_url(settings: Settings, stack: AsyncExitStack) -> str:
    if not settings.embedded_database:
        assert settings.database_url is not None
        return settings.database_url.reveal()
    pg = EmbeddedPostgres(data_root(settings) / "postgres")
    url = await anyio.to_thread.run_sync(pg.start)
    stack.callback(pg.stop)
    log.info("Embedded PostgreSQL started", extra={"dataDir": str(pg.data_dir) if hasattr(pg, "data_dir") else ""})
    return url


@asynccontextmanager
async def orchestrator(settings: Settings, extra_routes: list[BaseRoute] | None = None) -> AsyncIterator[Orchestrator]:
    """Open every adapter for ``settings``; closes them on exit."""
    async with AsyncExitStack() as stack:
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
        blobs = blob_store(settings)
        secrets: SecretStore
        if settings.secret_key is not None:
            secrets = PgSecretStore(db, settings.secret_key, old_key=settings.secret_key_old)
        else:
            log.warning("KICI_SECRET_KEY not set: secrets subsystem disabled; webhook sources cannot be registered")
            secrets = DisabledSecretStore()
        sources = PgSourceStore(db)
        inbox = PgDeliveryInbox(db, blobs, max_payload_bytes=settings.event_log_max_payload_bytes)
        tokens = PgTokenStore(db)
        github = GitHubProvider(
            secrets=secrets, default_api_url=settings.github_api_url, lockfile_max_bytes=settings.lockfile_max_bytes,
            cache=LockfileCache(max_entries=settings.lockfile_cache_max,
                                ttl_seconds=settings.lockfile_cache_ttl_ms / 1000),
            validate=lockfile.parse_lockfile,  # a corrupt lock file is never cached
        )
        stack.push_async_callback(github.aclose)
        local = localgit.LocalGitRepos(max_lockfile_bytes=settings.lockfile_max_bytes)
        pipeline = services.Pipeline(
            sources=sources,
            providers={
                "github": services.Provider(lockfiles=github, changed_files=github, repo_url=_github_repo_url),
                "local": services.Provider(lockfiles=local, changed_files=local, repo_url=_local_repo_url),
            },
            ids=_uuid, timer=_perf_counter, observer=PrometheusObserver(),
        )
        # --- Platform link (platform/hybrid): execution.event and status forwarding go to the durable outbox
        platform_outbox = PgPlatformOutbox(db) if settings.platform_enabled else None
        worker = DeliveryWorker(inbox=inbox, pipeline=pipeline, worker_id=f"{socket.gethostname()}:{os.getpid()}",
                                platform=platform_outbox)

        async def check_database() -> bool:
            async with db.connection() as conn:
                await conn.execute("SELECT delivery_id FROM event_log LIMIT 1")
            return True

        ctx = AppContext(
            mode=settings.mode, sources=sources, secrets=secrets, inbox=inbox, event_log=inbox,
            base_path=settings.base_path, version=VERSION, build_commit=settings.build_commit,
            wake_worker=worker.wake, check_database=check_database, tokens=tokens, blobs=blobs,
            max_body_bytes=settings.http_max_body_bytes,
            generic_max_body_bytes=settings.generic_webhook_max_body_bytes,
        )
        app = build_app(ctx, extra_routes or [])
        yield Orchestrator(settings=settings, db=db, ctx=ctx, app=app, worker=worker, github=github,
                           platform_outbox=platform_outbox)


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def _perf_counter() -> float:
    import time

    return time.perf_counter()


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


async def serve(settings: Settings, *, ready: Callable[[int], None] | None = None) -> None:
    """Run the orchestrator until SIGTERM/SIGINT: HTTP server and background loops in one task group."""
    async with orchestrator(settings) as orch:
        config = uvicorn.Config(orch.app, host=settings.host, port=settings.port, log_config=None,
                                access_log=False, lifespan="off", timeout_graceful_shutdown=30)
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(orch.worker.run)

            async def run_http() -> None:
                await server.serve()
                tg.cancel_scope.cancel()

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        log.info("Shutdown requested: draining HTTP requests and stopping background loops")
                        server.should_exit = True
                        return

            async def announce() -> None:
                while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                    await anyio.sleep(0.05)
                port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
                label = "Orchestrator (standalone)" if settings.entry_point == "standalone" else "Orchestrator"
                log.info(f"{label} started on port {port}")
                if settings.platform_enabled:  # --- Platform relay client (platform/hybrid), once HTTP listens
                    from kici_runtime import server as platform_server

                    tg.start_soon(platform_server.run_platform_link, orch)
                if ready is not None:
                    ready(port)

            tg.start_soon(stop_on_signal)
            tg.start_soon(announce)
            tg.start_soon(run_http)
    metrics.platform_connection_status.set(0)
