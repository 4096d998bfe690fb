"""``PgSourceStore``: GitHub App sources (``sources``) and generic/local sources (``generic_webhook_sources``).

The single-source lookups that every webhook makes (by routing key, by id, by org and name) go through a short
in-process cache (``cache_seconds``, default 1 s): a write through this store clears it at once, so a source
added or changed here is used by the very next request; another process's write is seen once the entry expires
(the table triggers also ``NOTIFY sources_change`` / ``generic_sources_change``). Concurrent misses for one key
share a single query. Lists always read the database. Secrets are never stored here (they live in the
SecretStore).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar, cast

import anyio
import psycopg.errors
from psycopg.types.json import Jsonb

from kici_adapters.postgres.pool import Connection, Database
from kici_adapters.postgres.queries import q
from kici_core import errors
from kici_core.jsontypes import JSONObject
from kici_core.source_records import GenericSource, GitHubSource

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_CONFLICT = "Conflict: resource already exists"
_T = TypeVar("_T")


def is_uuid(value: str) -> bool:
    """True when ``value`` is UUID text (any case)."""
    return _UUID.match(value) is not None


def row_to_github(row: Mapping[str, Any]) -> GitHubSource:
    """A ``sources`` row as a domain record."""
    return GitHubSource(
        id=str(row["id"]),
        routing_key=row["routing_key"],
        name=row["name"],
        app_id=row["app_id"],
        customer_id=row["customer_id"],
        api_url=row["api_url"],
        slug=row["slug"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def row_to_generic(row: Mapping[str, Any]) -> GenericSource:
    """A ``generic_webhook_sources`` row as a domain record."""
    allowed = row["allowed_events"]
    provider_type = cast(Literal["generic", "local"], row["provider_type"])
    return GenericSource(
        id=str(row["id"]),
        org_id=row["org_id"],
        name=row["name"],
        routing_key=row["routing_key"],
        provider_type=provider_type,
        verification_method=row["verification_method"],
        verification_config=cast(JSONObject, row["verification_config"] or {}),
        event_type_header=row["event_type_header"],
        event_type_path=row["event_type_path"],
        idempotency_key_header=row["idempotency_key_header"],
        idempotency_key_path=row["idempotency_key_path"],
        dedup_window_seconds=row["dedup_window_seconds"],
        max_payload_bytes=row["max_payload_bytes"],
        allowed_events=None if allowed is None else tuple(str(e) for e in allowed),
        enabled=row["enabled"],
        rate_limit_rpm=row["rate_limit_rpm"],
        git_config=cast("JSONObject | None", row["git_config"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
    )


def _github_params(source: GitHubSource) -> dict[str, Any]:
    return {
        "id": source.id,
        "customer_id": source.customer_id,
        "name": source.name,
        "routing_key": source.routing_key,
        "app_id": source.app_id,
        "api_url": source.api_url,
        "slug": source.slug,
        "config": Jsonb({"appId": source.app_id}),
        "created_at": source.created_at,
    }


def _generic_params(source: GenericSource) -> dict[str, Any]:
    return {
        "id": source.id,
        "org_id": source.org_id,
        "name": source.name,
        "routing_key": source.routing_key,
        "provider_type": source.provider_type,
        "verification_method": source.verification_method,
        "verification_config": Jsonb(source.verification_config),
        "event_type_header": source.event_type_header,
        "event_type_path": source.event_type_path,
        "idempotency_key_header": source.idempotency_key_header,
        "idempotency_key_path": source.idempotency_key_path,
        "dedup_window_seconds": source.dedup_window_seconds,
        "max_payload_bytes": source.max_payload_bytes,
        "allowed_events": None if source.allowed_events is None else Jsonb(list(source.allowed_events)),
        "enabled": source.enabled,
        "rate_limit_rpm": source.rate_limit_rpm,
        "git_config": None if source.git_config is None else Jsonb(source.git_config),
        "created_at": source.created_at,
        "deleted_at": source.deleted_at,
    }


class LookupCache:
    """A small TTL cache for single-source lookups, safe against writes that race with reads.

    ``generation`` moves on every :meth:`invalidate`; a lookup that started before an invalidation does not
    store its (possibly stale) answer. Concurrent misses for one key wait for the first caller's query.
    ``None`` answers are cached too (an unknown routing key costs one query per TTL, not one per request);
    the number of entries is bounded so unknown keys cannot grow it without limit.
    """

    def __init__(self, *, ttl: float, max_entries: int = 4096, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._now = monotonic
        self._entries: dict[Hashable, tuple[float, object]] = {}
        self._inflight: dict[Hashable, anyio.Event] = {}
        self.generation = 0

    def invalidate(self) -> None:
        """Forget every entry (and make lookups already in flight not store their answers)."""
        self.generation += 1
        self._entries.clear()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[_T]]) -> _T:
        """The cached answer for ``key``, else ``await load()`` (whose exceptions propagate, uncached)."""
        if self.ttl <= 0:
            return await load()
        while True:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > self._now():
                return cast(_T, hit[1])
            waiting = self._inflight.get(key)
            if waiting is None:
                break
            await waiting.wait()  # the leader stored an answer, or failed: look again
        done = anyio.Event()
        self._inflight[key] = done
        generation = self.generation
        try:
            value = await load()
            if generation == self.generation:
                if len(self._entries) >= self.max_entries:
                    self._prune()
                self._entries[key] = (self._now() + self.ttl, value)
            return value
        finally:
            del self._inflight[key]
            done.set()

    def _prune(self) -> None:
        now = self._now()
        for k in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[k]
        if len(self._entries) >= self.max_entries:
            self._entries.clear()


class PgSourceStore:
    """The ``SourceStore`` port over PostgreSQL. Raises ``StorageUnavailable`` when the database is down.

    Args:
        db: the pool.
        cache_seconds: how long a single-source lookup is reused (0 turns the cache off); see the module
            docstring for what another process's write costs.
    """

    def __init__(
        self, db: Database, *, cache_seconds: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._cache = LookupCache(ttl=cache_seconds, monotonic=monotonic)

    def invalidate(self) -> None:
        """Drop cached lookups (writes through this store do it themselves)."""
        self._cache.invalidate()

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[Connection]:
        """A connection for a write; the cache is cleared once the write has committed (or failed)."""
        try:
            async with self._db.connection() as conn:
                yield conn
        finally:
            self._cache.invalidate()

    # ------------------------------------------------------------------------------------------ github
    async def add_github(self, source: GitHubSource) -> GitHubSource:
        """Insert; raises ``Conflict`` when the routing key (or id) exists."""
        if not is_uuid(source.id):
            raise errors.InvalidInput(f"source id must be a UUID, got {source.id!r}")
        async with self._writing() as conn:
            try:
                cur = await conn.execute(q("github_insert"), _github_params(source))
            except psycopg.errors.UniqueViolation:
                raise errors.Conflict(_CONFLICT) from None
            row = await cur.fetchone()
        assert row is not None
        return row_to_github(row)

    async def github_by_routing_key(self, routing_key: str) -> GitHubSource | None:
        """The source with this routing key, or None (cached, see the module docstring)."""
        return await self._cache.get(("github", routing_key), lambda: self._github_by_routing_key(routing_key))

    async def _github_by_routing_key(self, routing_key: str) -> GitHubSource | None:
        async with self._db.connection() as conn:
            cur = await conn.execute(q("github_by_routing_key"), {"routing_key": routing_key})
            row = await cur.fetchone()
        return None if row is None else row_to_github(row)

    async def list_github(self) -> list[GitHubSource]:
        """Every GitHub source, by routing key."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("github_list"))
            return [row_to_github(r) for r in await cur.fetchall()]

    async def update_github(self, source: GitHubSource) -> GitHubSource:
        """Replace the mutable fields of the source with this routing key; raises ``NotFound``."""
        async with self._writing() as conn:
            cur = await conn.execute(q("github_update"), _github_params(source))
            row = await cur.fetchone()
        if row is None:
            raise errors.NotFound("Source not found")
        return row_to_github(row)

    async def remove_github(self, routing_key: str) -> bool:
        """Delete; True when a row was removed."""
        async with self._writing() as conn:
            cur = await conn.execute(q("github_delete"), {"routing_key": routing_key})
            return await cur.fetchone() is not None

    # ------------------------------------------------------------------------------------------ generic
    async def add_generic(self, source: GenericSource) -> GenericSource:
        """Insert; raises ``Conflict`` when a live source of the org has this name (or the id/key exists)."""
        if not is_uuid(source.id):
            raise errors.InvalidInput(f"source id must be a UUID, got {source.id!r}")
        async with self._writing() as conn:
            try:
                cur = await conn.execute(q("generic_insert"), _generic_params(source))
            except psycopg.errors.UniqueViolation:
                raise errors.Conflict(_CONFLICT) from None
            row = await cur.fetchone()
        assert row is not None
        return row_to_generic(row)

    async def generic_by_id(self, source_id: str) -> GenericSource | None:
        """The source (deleted or not) with this id, or None (cached)."""
        if not is_uuid(source_id):
            return None
        return await self._cache.get(("generic-id", source_id.lower()), lambda: self._generic_by_id(source_id))

    async def _generic_by_id(self, source_id: str) -> GenericSource | None:
        async with self._db.connection() as conn:
            cur = await conn.execute(q("generic_by_id"), {"id": source_id})
            row = await cur.fetchone()
        return None if row is None else row_to_generic(row)

    async def generic_by_org_and_name(self, org_id: str, name: str) -> GenericSource | None:
        """The live source named ``name`` in the org, else the live source whose id is ``name`` (cached)."""
        return await self._cache.get(
            ("generic-name", org_id, name), lambda: self._generic_by_org_and_name(org_id, name)
        )

    async def _generic_by_org_and_name(self, org_id: str, name: str) -> GenericSource | None:
        params = {"org_id": org_id, "name": name, "as_id": name if is_uuid(name) else None}
        async with self._db.connection() as conn:
            cur = await conn.execute(q("generic_by_org_and_name"), params)
            row = await cur.fetchone()
        return None if row is None else row_to_generic(row)

    async def list_generic(self, org_id: str | None = None, *, include_deleted: bool = False) -> list[GenericSource]:
        """Sources (of one org, or all), by org and name; soft-deleted ones only when asked."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("generic_list"), {"org_id": org_id, "include_deleted": include_deleted})
            return [row_to_generic(r) for r in await cur.fetchall()]

    async def update_generic(self, source: GenericSource) -> GenericSource:
        """Replace every field of the source with this id; raises ``NotFound`` or ``Conflict`` (name taken)."""
        if not is_uuid(source.id):
            raise errors.NotFound("Source not found")
        async with self._writing() as conn:
            try:
                cur = await conn.execute(q("generic_update"), _generic_params(source))
            except psycopg.errors.UniqueViolation:
                raise errors.Conflict(_CONFLICT) from None
            row = await cur.fetchone()
        if row is None:
            raise errors.NotFound("Source not found")
        return row_to_generic(row)

    async def remove_generic(self, source_id: str, *, hard: bool = False) -> bool:
        """Soft-delete (disable, keep the row, free the name) or hard-delete; True when the source exists."""
        if not is_uuid(source_id):
            return False
        async with self._writing() as conn:
            cur = await conn.execute(q("generic_hard_delete" if hard else "generic_soft_delete"), {"id": source_id})
            return await cur.fetchone() is not None
