"""PgSourceStore's lookup cache against a real database: own writes are seen at once, other processes' after
the TTL."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.sources import PgSourceStore
from kici_core.source_records import GenericSource, GitHubSource

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _github(app_id: str) -> GitHubSource:
    return GitHubSource(id=str(uuid.uuid4()), routing_key=f"github:{app_id}", name=f"app-{app_id}", app_id=app_id)


async def test_a_source_added_through_the_store_is_found_immediately(database: Database) -> None:
    store = PgSourceStore(database, monotonic=Clock())
    assert await store.github_by_routing_key("github:1") is None  # cached negative answer
    added = await store.add_github(_github("1"))
    assert await store.github_by_routing_key("github:1") == added
    renamed = await store.update_github(dataclasses.replace(added, name="renamed"))
    assert await store.github_by_routing_key("github:1") == renamed
    await store.remove_github("github:1")
    assert await store.github_by_routing_key("github:1") is None


async def test_generic_lookups_follow_own_writes(database: Database) -> None:
    store = PgSourceStore(database, monotonic=Clock())
    sid = str(uuid.uuid4())
    source = await store.add_generic(
        GenericSource(id=sid, org_id="acme", name="deploys", routing_key=f"generic:acme:{sid}")
    )
    assert await store.generic_by_org_and_name("acme", "deploys") == source
    assert await store.generic_by_id(sid) == source
    await store.remove_generic(sid)  # soft delete: frees the name, keeps the row
    assert await store.generic_by_org_and_name("acme", "deploys") is None
    found = await store.generic_by_id(sid)
    assert found is not None and found.deleted_at is not None


async def test_another_process_write_is_seen_after_the_ttl(database: Database) -> None:
    clock = Clock()
    reader = PgSourceStore(database, cache_seconds=1.0, monotonic=clock)
    writer = PgSourceStore(database)  # stands for another orchestrator process
    assert await reader.github_by_routing_key("github:2") is None
    added = await writer.add_github(_github("2"))
    assert await reader.github_by_routing_key("github:2") is None  # still within the TTL
    clock.t += 1.01
    assert await reader.github_by_routing_key("github:2") == added
