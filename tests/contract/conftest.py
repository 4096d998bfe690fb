"""Contract fixtures: every port suite runs once against the fake and once against the PostgreSQL adapter.

A harness wraps the store under test plus the few test-only levers the contract needs (expire leases, make
retries due, inspect what ``complete`` wrote), implemented per backend: the fake moves its own clock-based
fields, the PostgreSQL harness moves the rows' times into the past with SQL, so nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.postgres.tokens import PgTokenStore
from kici_core.testing import fakes
from tests.support.pg import db_url, pg_server, pg_template

__all__ = ["db_url", "pg_server", "pg_template"]

BACKENDS = ["fake", "pg"]
SMALL_LIMIT = 64
"""The payload size limit the inbox harnesses are built with (so the size test needs no 5 MiB body)."""


class FakeInboxHarness:
    def __init__(self) -> None:
        self.clock = fakes.FakeClock()
        self.blobs = fakes.FakeBlobStore()
        self.inbox = fakes.FakeDeliveryInbox(self.blobs, self.clock, max_payload_bytes=SMALL_LIMIT)

    async def expire_leases(self) -> None:
        for row in self.inbox.rows.values():
            if row.locked_until is not None:
                row.locked_until = self.clock.now() - timedelta(seconds=1)

    async def make_due(self) -> None:
        for row in self.inbox.rows.values():
            if row.available_at is not None:
                row.available_at = self.clock.now() - timedelta(seconds=1)

    async def run_workflows(self, org_id: str, delivery_id: str) -> dict[str, str]:
        return {w: rid for (o, d, w), rid in self.inbox.runs_by_delivery.items() if (o, d) == (org_id, delivery_id)}

    async def queued_job_ids(self) -> list[str]:
        return [job.job_id for job in self.inbox.queue]


class PgInboxHarness:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.blobs = fakes.FakeBlobStore()
        self.inbox = PgDeliveryInbox(db, self.blobs, max_payload_bytes=SMALL_LIMIT)

    async def _exec(self, sql: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, params)
            return list(await cur.fetchall()) if cur.description else []

    async def expire_leases(self) -> None:
        await self._exec("UPDATE delivery_inbox SET locked_until = now() - interval '1 second'"
                         " WHERE locked_until IS NOT NULL")

    async def make_due(self) -> None:
        await self._exec("UPDATE delivery_inbox SET available_at = now() - interval '1 second'")

    async def run_workflows(self, org_id: str, delivery_id: str) -> dict[str, str]:
        rows = await self._exec("SELECT workflow_name, run_id FROM execution_runs WHERE org_id = %(o)s"
                                " AND delivery_id = %(d)s", {"o": org_id, "d": delivery_id})
        return {r["workflow_name"]: str(r["run_id"]) for r in rows}

    async def queued_job_ids(self) -> list[str]:
        return [str(r["id"]) for r in await self._exec("SELECT id FROM dispatch_queue ORDER BY seq")]


async def _open(request: pytest.FixtureRequest) -> Database:
    db = Database(request.getfixturevalue("db_url"), max_size=4, timeout=5.0)
    await db.open()
    return db


@pytest.fixture(params=BACKENDS)
async def inbox_h(request: pytest.FixtureRequest) -> AsyncIterator[FakeInboxHarness | PgInboxHarness]:
    """An inbox harness per backend."""
    if request.param == "fake":
        yield FakeInboxHarness()
        return
    db = await _open(request)
    try:
        yield PgInboxHarness(db)
    finally:
        await db.close()


@pytest.fixture(params=BACKENDS)
async def sources(request: pytest.FixtureRequest) -> AsyncIterator[fakes.FakeSourceStore | PgSourceStore]:
    """A source store per backend."""
    if request.param == "fake":
        yield fakes.FakeSourceStore()
        return
    db = await _open(request)
    try:
        yield PgSourceStore(db)
    finally:
        await db.close()


@pytest.fixture(params=BACKENDS)
async def tokens(request: pytest.FixtureRequest) -> AsyncIterator[fakes.FakeTokenStore | PgTokenStore]:
    """A token store per backend."""
    if request.param == "fake":
        yield fakes.FakeTokenStore()
        return
    db = await _open(request)
    try:
        yield PgTokenStore(db)
    finally:
        await db.close()
