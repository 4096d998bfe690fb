"""Contract fixtures: every port suite runs once against the fake and once against the PostgreSQL adapter.

A harness wraps the store under test plus the few test-only levers the contract needs (expire leases, make
retries due, inspect what ``complete`` wrote), implemented per backend: the fake moves its own clock-based
fields, the PostgreSQL harness moves the rows' times into the past with SQL, so nothing sleeps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kici_adapters.postgres.concurrency import PgConcurrency
from kici_adapters.postgres.dispatch import PgDispatchQueue
from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.runs import PgRunStore
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.postgres.tokens import PgTokenStore
from kici_core.delivery_records import Delivery, DeliveryOutcome
from kici_core.run_records import NewRun
from kici_core.testing import fakes
from kici_core.token_records import AgentToken
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
        await self._exec(
            "UPDATE delivery_inbox SET locked_until = now() - interval '1 second' WHERE locked_until IS NOT NULL"
        )

    async def make_due(self) -> None:
        await self._exec("UPDATE delivery_inbox SET available_at = now() - interval '1 second'")

    async def run_workflows(self, org_id: str, delivery_id: str) -> dict[str, str]:
        rows = await self._exec(
            "SELECT workflow_name, run_id FROM execution_runs WHERE org_id = %(o)s AND delivery_id = %(d)s",
            {"o": org_id, "d": delivery_id},
        )
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


class FakeDispatchHarness:
    """The fake queue, run store and concurrency groups over one set of tables; ``now()`` is the fake clock's."""

    def __init__(self) -> None:
        self.clock = fakes.FakeClock()
        self.tables = fakes.FakeDispatchTables(self.clock.now)
        self.queue = fakes.FakeDispatchQueue(self.tables)
        self.runs = fakes.FakeRunStore(self.tables, self.queue)
        self.groups = fakes.FakeConcurrencyGroups(self.tables)

    def now(self) -> float:
        return self.tables.now()

    async def add_run(self, run: NewRun) -> None:
        self.tables.add_run(run)

    async def job_status(self, job_id: str) -> str:
        return self.tables.jobs[job_id].status

    async def row_status(self, job_id: str) -> str | None:
        row = self.tables.queue.get(job_id)
        return None if row is None else row.status

    async def run_status(self, run_id: str) -> str:
        return self.tables.runs[run_id].status

    async def expire_queue_rows(self) -> None:
        for row in self.tables.queue.values():
            row.expires_at = self.now() - 60

    async def add_agent_token(self, token_id: str) -> None:
        self.tables.live_tokens.add(token_id)

    async def revoke_agent_token(self, token_id: str) -> None:
        self.tables.live_tokens.discard(token_id)


class PgDispatchHarness:
    """The PostgreSQL adapters; runs are stored the way processing stores them (accept, claim, complete)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inbox = PgDeliveryInbox(db, fakes.FakeBlobStore())
        self.queue = PgDispatchQueue(db)
        self.runs = PgRunStore(db)
        self.groups = PgConcurrency(db)
        self._n = 0

    def now(self) -> float:
        return time.time()

    async def add_run(self, run: NewRun) -> None:
        self._n += 1
        await self.inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id=f"d-{self._n}-{run.run_id}",
                routing_key=run.routing_key,
                event="push",
                action=None,
                source="direct",
                provider=run.provider,
                body=b"{}",
                received_at=datetime.now(UTC),
            )
        )
        [item] = await self.inbox.claim(worker_id="contract", limit=1, lease_seconds=60)
        await self.inbox.complete(item, DeliveryOutcome(status="processed", matched_count=1), [run])

    async def _one(self, sql: Any, params: dict[str, Any]) -> Any:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
            return None if row is None else row["status"]

    async def job_status(self, job_id: str) -> str:
        return str(await self._one("SELECT status FROM execution_jobs WHERE job_id = %(id)s", {"id": job_id}))

    async def row_status(self, job_id: str) -> str | None:
        status = await self._one("SELECT status FROM dispatch_queue WHERE id = %(id)s", {"id": job_id})
        return None if status is None else str(status)

    async def run_status(self, run_id: str) -> str:
        return str(await self._one("SELECT status FROM execution_runs WHERE run_id = %(id)s", {"id": run_id}))

    async def expire_queue_rows(self) -> None:
        async with self.db.connection() as conn:
            await conn.execute("UPDATE dispatch_queue SET expires_at = now() - interval '60 seconds'")

    async def add_agent_token(self, token_id: str) -> None:
        token = AgentToken(id=token_id, token_prefix="kat_" + token_id[:8])
        await PgTokenStore(self.db).create_agent_token(token, hashlib.sha256(token_id.encode()).hexdigest())

    async def revoke_agent_token(self, token_id: str) -> None:
        await PgTokenStore(self.db).revoke_agent_token(token_id)


@pytest.fixture(params=BACKENDS)
async def dispatch_h(request: pytest.FixtureRequest) -> AsyncIterator[FakeDispatchHarness | PgDispatchHarness]:
    """The dispatch queue, run store and concurrency groups per backend."""
    if request.param == "fake":
        yield FakeDispatchHarness()
        return
    db = await _open(request)
    harness = PgDispatchHarness(db)
    try:
        yield harness
    finally:
        await harness.queue.aclose()
        await harness.runs.aclose()
        await db.close()
