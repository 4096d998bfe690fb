"""The parts both kinds of orchestrator process build from ``Settings``: the serving process and the processing
children (``processing``) each assemble delivery processing here, so neither needs the other's wiring.

:func:`processing_parts` builds the inbox, the pipeline, the delivery worker and the payload offloader;
:func:`blob_store`, :func:`data_root` and :func:`instance_id` resolve what they stand on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from kici_adapters import localgit
from kici_adapters.github.lockfiles import LockfileCache
from kici_adapters.github.provider import GitHubProvider
from kici_adapters.postgres.inbox import COMMIT_LANES, COMPLETE_LANES
from kici_adapters.postgres.offload import PayloadOffloader
from kici_adapters.postgres.outbox import PgPlatformOutbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.registrations import PgRegistrations
from kici_adapters.postgres.reruns import PgReruns
from kici_adapters.postgres.runs import PgRunStore
from kici_adapters.postgres.secrets import PgSecretStore
from kici_adapters.postgres.stores import PgDeliveryInbox, PgSourceStore
from kici_adapters.storage import FilesystemBlobStore, S3BlobStore
from kici_core import errors, lockfile
from kici_core.jsontypes import JSONValue
from kici_core.pipeline import Pipeline, Provider
from kici_core.ports import BlobStore, SecretStore
from kici_core.source_records import GitHubSource, RepoSource
from kici_runtime.config.settings import Settings
from kici_runtime.orchestrator.worker import DeliveryWorker, PrometheusObserver, ThreadOffload

log = logging.getLogger("kici.runtime")


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
        return S3BlobStore(
            s.log_bucket or s.bucket or "",
            prefix=s.prefix or "kici-logs/",
            region=s.region,
            endpoint=s.endpoint,
            force_path_style=s.force_path_style,
        )
    base = (
        Path(settings.webhook_payload_dir) / "logs"
        if settings.webhook_payload_dir
        else (Path(s.fs_path) if s.fs_path else data_root(settings) / "cache" / "logs")
    )
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


def instance_id(settings: Settings) -> str:
    """This process's id in ``agents.connected_instance``: ``KICI_CLUSTER_INSTANCE_ID``, else ``<host>:<port>``
    (stable across restarts, so a restarted process recognises the jobs its agents were running)."""
    return settings.instance_id or f"{socket.gethostname()}:{settings.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessingParts:
    """What delivery processing needs: the inbox, the pipeline's worker, the payload offloader and their stores."""

    blobs: BlobStore
    secrets: SecretStore
    sources: PgSourceStore
    github: GitHubProvider
    inbox: PgDeliveryInbox
    worker: DeliveryWorker
    offloader: PayloadOffloader
    platform_outbox: PgPlatformOutbox | None
    pipeline: Pipeline
    registrations: PgRegistrations


async def processing_parts(
    settings: Settings,
    db: Database,
    stack: AsyncExitStack,
    *,
    worker_id: str,
    on_accepted: Callable[[], None] | None = None,
) -> ProcessingParts:
    """Build the inbox, the delivery worker (claiming as ``worker_id``) and the payload offloader over ``db``.

    ``on_accepted`` is called after each new acceptance; when None the local offloader is woken instead.
    Closing callbacks go on ``stack``. Used by the serving process and by processing children alike.
    """
    blobs = blob_store(settings)
    secrets: SecretStore = PgSecretStore(db, settings.secret_key, old_key=settings.secret_key_old)
    sources = PgSourceStore(db)
    offloader = PayloadOffloader(db, blobs)  # accepted bodies: database -> object storage, in the background
    inbox = PgDeliveryInbox(
        db,
        blobs,
        max_payload_bytes=settings.event_log_max_payload_bytes,
        on_accepted=on_accepted or offloader.wake,
        forward=settings.platform_enabled,
    )
    stack.push_async_callback(inbox.aclose)  # its group-commit lane connections
    github = GitHubProvider(
        secrets=secrets,
        default_api_url=settings.github_api_url,
        lockfile_max_bytes=settings.lockfile_max_bytes,
        cache=LockfileCache(max_entries=settings.lockfile_cache_max, ttl_seconds=settings.lockfile_cache_ttl_ms / 1000),
        validate=lockfile.parse_lockfile,  # a corrupt lock file is never cached
    )
    stack.push_async_callback(github.aclose)
    local = localgit.LocalGitRepos(max_lockfile_bytes=settings.lockfile_max_bytes)
    registrations = PgRegistrations(db)
    pipeline = Pipeline(
        sources=sources,
        providers={
            "github": Provider(lockfiles=github, changed_files=github, repo_url=_github_repo_url),
            "local": Provider(lockfiles=local, changed_files=local, repo_url=_local_repo_url),
        },
        ids=new_id,
        timer=perf_counter,
        observer=PrometheusObserver(),
        # GitHub's "Re-run" buttons (check_run / check_suite rerequested) start new attempts
        reruns=PgReruns(PgRunStore(db, forward=settings.platform_enabled, instance_id=worker_id)),
        offload=ThreadOffload(),
        budget_seconds=float(settings.processing_timeout_seconds),
        max_runs=settings.max_runs_per_delivery,
        max_jobs=settings.max_jobs_per_delivery,
        registrations=registrations,  # default-branch pushes register workflows; schedule fires read them
    )
    # --- Platform link (platform/hybrid): execution.event and status forwarding go to the durable outbox
    platform_outbox = PgPlatformOutbox(db) if settings.platform_enabled else None
    worker = DeliveryWorker(inbox=inbox, pipeline=pipeline, worker_id=worker_id, blobs=blobs, platform=platform_outbox)
    try:  # the completion (and acceptance) lanes' connections, ready before the first burst (a connect costs
        # tens of ms); concurrent completions share them (see PgDeliveryInbox.complete)
        await inbox.warm(min(worker.concurrency, COMPLETE_LANES + COMMIT_LANES))
    except errors.Unavailable as exc:
        log.warning("could not open the inbox connections ahead of time", extra={"error": str(exc)})
    return ProcessingParts(
        blobs=blobs,
        secrets=secrets,
        sources=sources,
        github=github,
        inbox=inbox,
        worker=worker,
        offloader=offloader,
        platform_outbox=platform_outbox,
        pipeline=pipeline,
        registrations=registrations,
    )


def new_id() -> str:
    """A random UUID, as text (ids of runs, jobs and tokens)."""
    return str(uuid.uuid4())


def perf_counter() -> float:
    """The monotonic clock the pipeline times its stages with."""
    return time.perf_counter()
