"""SourceStore contract: the fake and PgSourceStore behave the same."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from kici_adapters.postgres.sources import PgSourceStore
from kici_core import errors
from kici_core.source_records import GenericSource, GitHubSource
from kici_core.testing import fakes

pytestmark = pytest.mark.anyio

Store = fakes.FakeSourceStore | PgSourceStore


def github(app_id: str = "42", **kw: object) -> GitHubSource:
    return GitHubSource(id=str(uuid.uuid4()), routing_key=f"github:{app_id}", name=f"app-{app_id}", app_id=app_id, **kw)  # type: ignore[arg-type]


def generic(name: str = "deploys", org: str = "acme", **kw: object) -> GenericSource:
    sid = str(uuid.uuid4())
    return GenericSource(id=sid, org_id=org, name=name, routing_key=f"generic:{org}:{sid}", **kw)  # type: ignore[arg-type]


async def test_github_crud(sources: Store) -> None:
    src = github("42", api_url="https://ghe.example.test/api/v3", slug="kici-app")
    stored = await sources.add_github(src)
    assert stored.created_at is not None and stored.updated_at is not None
    assert dataclasses.replace(stored, created_at=None, updated_at=None) == src
    assert await sources.github_by_routing_key("github:42") == stored
    assert await sources.github_by_routing_key("github:43") is None

    with pytest.raises(errors.Conflict):
        await sources.add_github(github("42"))

    await sources.add_github(github("7"))
    assert [s.routing_key for s in await sources.list_github()] == ["github:42", "github:7"]

    updated = await sources.update_github(dataclasses.replace(stored, name="renamed", slug=None))
    assert (updated.name, updated.slug, updated.created_at) == ("renamed", None, stored.created_at)
    assert await sources.github_by_routing_key("github:42") == updated
    with pytest.raises(errors.NotFound):
        await sources.update_github(github("99"))

    assert await sources.remove_github("github:42") is True
    assert await sources.remove_github("github:42") is False
    assert await sources.github_by_routing_key("github:42") is None


async def test_generic_add_and_lookups(sources: Store) -> None:
    src = generic(
        "deploys",
        verification_method="bearer",
        verification_config={"header": "Authorization"},
        allowed_events=("push", "release"),
        git_config={"url": "file:///srv/repo"},
        provider_type="local",
    )
    stored = await sources.add_generic(src)
    assert dataclasses.replace(stored, created_at=None, updated_at=None) == src
    assert await sources.generic_by_id(src.id) == stored
    assert await sources.generic_by_id(str(uuid.uuid4())) is None
    assert await sources.generic_by_id("not-a-uuid") is None

    assert await sources.generic_by_org_and_name("acme", "deploys") == stored
    assert await sources.generic_by_org_and_name("acme", src.id) == stored  # UUID falls back to the id
    assert await sources.generic_by_org_and_name("other", src.id) is None
    assert await sources.generic_by_org_and_name("other", "deploys") is None

    # a source literally named like another source's id wins over the id fallback
    shadow = await sources.add_generic(generic(src.id))
    assert await sources.generic_by_org_and_name("acme", src.id) == shadow

    with pytest.raises(errors.Conflict):
        await sources.add_generic(generic("deploys"))
    await sources.add_generic(generic("deploys", org="other"))  # names are per org


async def test_generic_list_update_and_deletes(sources: Store) -> None:
    a = await sources.add_generic(generic("a"))
    b = await sources.add_generic(generic("b"))
    c = await sources.add_generic(generic("c", org="zeta"))
    assert [s.name for s in await sources.list_generic()] == ["a", "b", "c"]
    assert [s.name for s in await sources.list_generic("acme")] == ["a", "b"]

    updated = await sources.update_generic(dataclasses.replace(a, enabled=False, rate_limit_rpm=5))
    assert (updated.enabled, updated.rate_limit_rpm, updated.created_at) == (False, 5, a.created_at)
    with pytest.raises(errors.Conflict):
        await sources.update_generic(dataclasses.replace(a, name="b"))
    with pytest.raises(errors.NotFound):
        await sources.update_generic(generic("ghost"))

    assert await sources.remove_generic(b.id) is True  # soft
    assert await sources.remove_generic(b.id) is True  # idempotent
    soft = await sources.generic_by_id(b.id)
    assert soft is not None and soft.deleted_at is not None and soft.enabled is False
    assert await sources.generic_by_org_and_name("acme", "b") is None
    assert await sources.generic_by_org_and_name("acme", b.id) is None
    assert [s.name for s in await sources.list_generic("acme")] == ["a"]
    assert [s.name for s in await sources.list_generic("acme", include_deleted=True)] == ["a", "b"]
    reborn = await sources.add_generic(generic("b"))  # a soft-deleted name is free again
    assert await sources.generic_by_org_and_name("acme", "b") == reborn

    assert await sources.remove_generic(c.id, hard=True) is True
    assert await sources.generic_by_id(c.id) is None
    assert await sources.remove_generic(c.id, hard=True) is False
    assert await sources.remove_generic(str(uuid.uuid4())) is False
