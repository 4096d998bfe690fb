"""Admin API key rotation, database migration, unwired and failing parts, bootstrap token."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kici_core import errors
from kici_core.testing.fakes import (
    FakeSourceStore,
    FakeTokenStore,
)
from kici_runtime.orchestrator import bootstrap
from kici_runtime.orchestrator.admin.auth import token_hash
from tests.support.admin_env import ADMIN, Env, _ids, make_env

pytestmark = pytest.mark.anyio


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, client = await make_env()
    async with client:
        yield e


# ------------------------------------------------------------------------------------------ key, db, errors
async def test_rotate_key_and_db() -> None:
    async def rotate() -> int:
        return 5

    async def migrate() -> list[str]:
        return ["0002_x.sql"]

    async def status() -> list[dict[str, Any]]:
        return [{"name": "0001_initial.sql", "status": "applied", "appliedAt": "2026-01-01T00:00:00.000Z"}]

    e, client = await make_env(rotate_key=rotate, migrate=migrate, migration_status=status)
    async with client:
        assert (await e.call("POST", "/api/v1/admin/rotate-key", token=ADMIN)).status_code == 403
        r = await e.call("POST", "/api/v1/admin/rotate-key")
        assert r.json() == {"reEncrypted": 5, "reEncryptedConfigs": 0, "skippedConfigs": 0}
        assert (await e.call("POST", "/api/v1/admin/db/migrate")).json() == {"applied": 1, "migrations": ["0002_x.sql"]}
        r = await e.call("GET", "/api/v1/admin/db/migrate/status")
        assert r.json()["migrations"][0]["status"] == "applied"


async def test_unwired_operations_answer_503(env: Env) -> None:
    for method, path in (
        ("POST", "/api/v1/admin/rotate-key"),
        ("POST", "/api/v1/admin/db/migrate"),
        ("GET", "/api/v1/admin/db/migrate/status"),
    ):
        assert (await env.call(method, path)).status_code == 503


async def test_storage_outage_and_internal_errors() -> None:
    class Broken(FakeSourceStore):
        async def list_github(self) -> Any:
            raise errors.StorageUnavailable("db down")

        async def list_generic(self, org_id: str | None = None, *, include_deleted: bool = False) -> Any:
            raise RuntimeError("bug with secret-ish detail")

    e, client = await make_env(sources=Broken())
    async with client:
        r = await e.call("GET", "/api/v1/admin/sources")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        r = await e.call("GET", "/api/v1/admin/generic-sources?orgId=acme")
        assert (r.status_code, r.json()) == (500, {"error": "Internal server error"})


# ------------------------------------------------------------------------------------------ bootstrap
async def test_bootstrap_from_env_and_generated() -> None:
    tokens = FakeTokenStore()
    out = io.StringIO()
    ids = _ids()
    assert await bootstrap.ensure_bootstrap_token(tokens, "first-value", new_id=ids, out=out) is None
    assert out.getvalue() == ""
    assert (await tokens.admin_token_by_hash(token_hash("first-value"))) is not None
    await bootstrap.ensure_bootstrap_token(tokens, "second-value", new_id=ids, out=out)
    assert await tokens.admin_token_by_hash(token_hash("first-value")) is None
    assert (await tokens.admin_token_by_hash(token_hash("second-value"))).role == "owner"  # type: ignore[union-attr]
    # tokens exist: nothing generated
    assert await bootstrap.ensure_bootstrap_token(tokens, None, new_id=ids, out=out) is None

    empty = FakeTokenStore()
    generated = await bootstrap.ensure_bootstrap_token(empty, None, new_id=ids, out=out)
    assert generated is not None and len(generated) == 64
    assert out.getvalue() == f"\n  KICI Admin Token: {generated}\n"
    assert (await empty.admin_token_by_hash(token_hash(generated))).label == "bootstrap"  # type: ignore[union-attr]


async def test_bootstrap_logs_no_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    await bootstrap.ensure_bootstrap_token(FakeTokenStore(), "very-secret-bootstrap", new_id=_ids(), out=io.StringIO())
    assert "Bootstrap admin token ensured" in caplog.text and "very-secret-bootstrap" not in caplog.text
