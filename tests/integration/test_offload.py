"""PayloadOffloader against a real PostgreSQL: bodies reach object storage exactly once, failures keep them in
the database and are counted, several offloaders share the work, and the run loop is driven by wake()."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest
from psycopg import sql

from kici_adapters import metrics
from kici_adapters.postgres.inbox import LaneConnections, PgDeliveryInbox
from kici_adapters.postgres.offload import OffloadPass, PayloadOffloader
from kici_adapters.postgres.pool import Database
from kici_adapters.storage import FilesystemBlobStore
from kici_core import errors
from kici_core.delivery_records import Delivery, EventLogQuery
from kici_core.keys import event_log_payload_key
from kici_core.testing import fakes
from tests.support.pg import PgServer, scalar

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def delivery(n: int) -> Delivery:
    return Delivery(
        org_id="acme",
        delivery_id=f"d-{n}",
        routing_key="github:1",
        event="push",
        action=None,
        source="direct",
        provider="github",
        body=b'{"n": %d}' % n,
        received_at=T0 + timedelta(seconds=n),
    )


class CountingBlobs(fakes.FakeBlobStore):
    """Counts puts per key; ``gate`` (when set) holds every put until it is released."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: dict[str, int] = {}
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await super().put(key, data, durable=durable)
        self.puts[key] = self.puts.get(key, 0) + 1


async def test_filesystem_offload_end_to_end(database: Database, tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path / "objects")
    inbox = PgDeliveryInbox(database, blobs)
    for n in range(5):
        await inbox.accept(delivery(n))
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").rglob("*.gz"))
    assert await scalar(database, "SELECT count(*) FROM delivery_payloads") == 5
    offloader = PayloadOffloader(database, blobs, batch=2)
    assert await offloader.pending() == 5
    passes = [await offloader.run_once() for _ in range(4)]
    assert passes == [
        OffloadPass(moved=2, failed=0),
        OffloadPass(moved=2, failed=0),
        OffloadPass(moved=1, failed=0),
        OffloadPass(moved=0, failed=0),
    ]
    assert await offloader.pending() == 0
    for n in range(5):
        assert gzip.decompress(await blobs.get(event_log_payload_key("acme", f"d-{n}"))) == b'{"n": %d}' % n
        assert await inbox.payload("acme", f"d-{n}") == b'{"n": %d}' % n


async def test_failures_are_counted_and_kept(database: Database) -> None:
    blobs = fakes.FakeBlobStore()
    inbox = PgDeliveryInbox(database, blobs)
    for n in range(3):
        await inbox.accept(delivery(n))
    offloader = PayloadOffloader(database, blobs)
    before = metrics.REGISTRY.get_sample_value("kici_payload_offload_failures_total") or 0.0
    blobs.fail_puts = True
    assert await offloader.run_once() == OffloadPass(moved=0, failed=3)
    assert metrics.REGISTRY.get_sample_value("kici_payload_offload_failures_total") == before + 3
    assert await offloader.pending() == 3
    blobs.fail_puts = False
    assert await offloader.run_once() == OffloadPass(moved=3, failed=0)
    assert await offloader.pending() == 0


async def test_two_offloaders_move_each_body_once(database: Database, second_db: Database) -> None:
    blobs = CountingBlobs()
    inbox = PgDeliveryInbox(database, blobs)
    for n in range(40):
        await inbox.accept(delivery(n))
    a = PayloadOffloader(database, blobs, batch=7)
    b = PayloadOffloader(second_db, blobs, batch=7)

    async def drain(o: PayloadOffloader) -> None:
        while (await o.run_once()).moved:
            pass

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, a)
            tg.start_soon(drain, b)
    assert a.moved + b.moved == 40
    assert blobs.puts == {event_log_payload_key("acme", f"d-{n}"): 1 for n in range(40)}
    assert await a.pending() == 0


async def test_rows_being_offloaded_are_skipped_and_still_readable(database: Database, second_db: Database) -> None:
    blobs = CountingBlobs()
    blobs.gate = anyio.Event()
    inbox = PgDeliveryInbox(database, blobs)
    await inbox.accept(delivery(1))
    slow = PayloadOffloader(database, blobs)
    other = PayloadOffloader(second_db, blobs)
    results: list[OffloadPass] = []

    async def run_slow() -> None:
        results.append(await slow.run_once())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_slow)
            await blobs.entered.wait()  # the slow pass holds the row and is writing the object
            assert await other.run_once() == OffloadPass(moved=0, failed=0)  # SKIP LOCKED
            assert await inbox.payload("acme", "d-1") == b'{"n": 1}'  # readers never wait on the lock
            blobs.gate.set()
    assert results == [OffloadPass(moved=1, failed=0)]
    assert await inbox.payload("acme", "d-1") == b'{"n": 1}'


async def test_run_loop_offloads_when_woken_by_acceptance(database: Database) -> None:
    blobs = fakes.FakeBlobStore()
    all_moved = anyio.Event()
    total = 0

    def on_pass(p: OffloadPass) -> None:
        nonlocal total
        total += p.moved
        if total >= 10:
            all_moved.set()

    # a long poll: only wake() (called by every acceptance) makes the loop run promptly
    offloader = PayloadOffloader(database, blobs, poll_seconds=3600, on_pass=on_pass)
    inbox = PgDeliveryInbox(database, blobs, on_accepted=offloader.wake)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(offloader.run)
            for n in range(10):
                await inbox.accept(delivery(n))
            await all_moved.wait()
            tg.cancel_scope.cancel()
    assert await offloader.pending() == 0
    assert len(blobs.objects) == 10


async def test_deleting_an_entry_deletes_its_pending_body(database: Database) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(delivery(1))
    async with database.connection() as conn:
        await conn.execute("DELETE FROM event_log WHERE delivery_id = 'd-1'")
    assert await scalar(database, "SELECT count(*) FROM delivery_payloads") == 0


def kill_sessions(server: PgServer, db_url: str, *, allow_connections: bool) -> None:
    """Terminate every session on the test database (waiting until they are gone); optionally refuse new ones."""
    name = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allow_connections else "false")
            )
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


async def test_database_down_means_no_acknowledgement(database: Database, db_url: str, pg_server: PgServer) -> None:
    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    try:
        await inbox.accept(delivery(1))
        kill_sessions(pg_server, db_url, allow_connections=False)
        try:
            for n in (2, 3):  # the lane's connection dies mid-use, then no new one can be opened
                with pytest.raises(errors.StorageUnavailable):
                    await inbox.accept(delivery(n))
        finally:
            kill_sessions(pg_server, db_url, allow_connections=True)
        assert (await inbox.accept(delivery(4))).duplicate is False  # back once the database is
        entries, total = await inbox.list(EventLogQuery())
        assert sorted(e.delivery_id for e in entries) == ["d-1", "d-4"] and total == 2
    finally:
        await inbox.aclose()


async def test_idle_lane_connection_is_checked_and_replaced(db_url: str, pg_server: PgServer) -> None:
    lanes = LaneConnections(db_url, check_after=0.0)
    try:
        async with lanes.connection() as conn:
            first_pid = conn.info.backend_pid
        kill_sessions(pg_server, db_url, allow_connections=True)  # e.g. a server restart while idle
        async with lanes.connection() as conn:
            cur = await conn.execute("SELECT 1 AS one")
            assert await cur.fetchone() == {"one": 1}
            assert conn.info.backend_pid != first_pid
    finally:
        await lanes.aclose()


async def test_a_body_offloaded_before_its_claim_is_read_from_object_storage_alone(
    database: Database, db_url: str, pg_server: PgServer, tmp_path: Path
) -> None:
    # During a backlog the offloader moves bodies before processing claims them: processing then reads each one
    # from object storage, without a database round trip per delivery (shown here with the database gone).
    blobs = FilesystemBlobStore(tmp_path / "objects")
    inbox = PgDeliveryInbox(database, blobs)
    try:
        for n in range(3):
            await inbox.accept(delivery(n))
        assert await PayloadOffloader(database, blobs).run_once() == OffloadPass(moved=3, failed=0)
        items = await inbox.claim(worker_id="w", limit=3, lease_seconds=60)
        assert [i.delivery_id for i in items] == ["d-0", "d-1", "d-2"]
        kill_sessions(pg_server, db_url, allow_connections=False)
        try:
            assert [await inbox.payload(i) for i in items] == [b'{"n": %d}' % n for n in range(3)]
        finally:
            kill_sessions(pg_server, db_url, allow_connections=True)
    finally:
        await inbox.aclose()


async def test_a_claimed_body_missing_from_object_storage_is_not_found(database: Database) -> None:
    blobs = fakes.FakeBlobStore()
    inbox = PgDeliveryInbox(database, blobs)
    try:
        await inbox.accept(delivery(1))
        await PayloadOffloader(database, blobs).run_once()
        blobs.objects.clear()  # e.g. removed by retention
        (item,) = await inbox.claim(worker_id="w", limit=1, lease_seconds=60)
        with pytest.raises(errors.NotFound):
            await inbox.payload(item)
    finally:
        await inbox.aclose()
