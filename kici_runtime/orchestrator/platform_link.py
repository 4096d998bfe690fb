"""The Platform link of ``kici-server`` (``platform`` and ``hybrid`` modes): the relay client
(``kici_adapters.platform.client``) that receives relayed webhooks into the inbox and drains the durable outbox
of messages for the Platform, and the listener that re-registers the served sources when they change."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anyio

from kici_adapters import localgit
from kici_adapters.platform.client import AckDecision, ClientConfig, PlatformClient
from kici_adapters.platform.protocol import PlatformSource, RelayedDelivery
from kici_adapters.postgres import notify
from kici_adapters.postgres.outbox import PgPlatformOutbox
from kici_adapters.postgres.pool import Database
from kici_core import errors
from kici_core.ports import SourceStore
from kici_runtime.config.settings import Settings
from kici_runtime.orchestrator import ingest
from kici_runtime.orchestrator.context import AppContext
from kici_runtime.version import VERSION

log = logging.getLogger("kici.platform")


async def platform_sources(store: SourceStore) -> list[PlatformSource]:
    """The routing keys this orchestrator serves: every GitHub App (``github:<appId>``), every enabled generic
    source, and local sources whose repository exists on this host (``generic:<orgId>:<sourceId>``)."""
    out = [
        PlatformSource(provider="github", routing_key=s.routing_key, name=s.name, subtype="github_app", slug=s.slug)
        for s in await store.list_github()
    ]
    for g in await store.list_generic():
        if not g.enabled or g.deleted_at is not None:
            continue
        if g.provider_type == "local":
            try:
                if not localgit.repo_path(g).exists():
                    continue
            except errors.InvalidInput:
                continue
        out.append(
            PlatformSource(
                provider="generic",
                routing_key=g.routing_key,
                name=g.name,
                subtype="local" if g.provider_type == "local" else "generic_webhook",
            )
        )
    return out


def relay_client(
    settings: Settings, ctx: AppContext, outbox: PgPlatformOutbox | None, *, version: str, **overrides: Any
) -> PlatformClient:
    """The relay client for ``settings`` (platform/hybrid), accepting relayed deliveries into ``ctx``'s inbox.

    ``overrides`` replaces interval settings of :class:`ClientConfig` (tests shorten them).
    """
    if settings.platform_url is None or settings.platform_token is None:
        raise errors.ConfigError("KICI_PLATFORM_URL and KICI_PLATFORM_TOKEN are required in platform/hybrid mode")

    async def handle(delivery: RelayedDelivery, platform_org: str | None) -> AckDecision:
        return await ingest.accept_relayed(ctx, delivery, platform_org)

    async def sources() -> list[PlatformSource]:
        return await platform_sources(ctx.sources)

    config = dataclasses.replace(
        ClientConfig(
            url=settings.platform_url,
            token=settings.platform_token.reveal(),
            mode=settings.mode,
            version=version,
            instance_id=settings.instance_id,
        ),
        **overrides,
    )
    return PlatformClient(config, handler=handle, sources=sources, outbox=outbox)


async def listen_for_source_changes(db: Database, client: PlatformClient, *, retry_seconds: float = 5.0) -> None:
    """Forever: ``LISTEN`` on the source tables' channels and ask ``client`` to re-register on each change
    (the client also polls, so a lost listener only delays an update)."""
    async for note in notify.listen_forever(
        db, notify.SOURCES, retry_seconds=retry_seconds, what="source change notifications"
    ):
        if note is not None:
            client.sources_changed()


async def run_platform_link(
    settings: Settings,
    ctx: AppContext,
    outbox: PgPlatformOutbox | None,
    db: Database,
    *,
    client: PlatformClient | None = None,
) -> None:
    """Run the relay client (and its source-change listener) until cancelled."""
    link = client or relay_client(settings, ctx, outbox, version=VERSION)
    log.info("Connecting to the Platform", extra={"url": settings.platform_url, "mode": settings.mode})
    async with anyio.create_task_group() as tg:
        tg.start_soon(listen_for_source_changes, db, link)
        await link.run()
