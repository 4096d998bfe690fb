"""Ingest benchmark: durable acceptance against the raw cost of a committed claim.

Measures, at concurrency 1, 4 and 16:

(a) raw: single-row ``INSERT ... ON CONFLICT DO NOTHING`` statements, each its own commit, with psycopg on one
    connection per concurrent client — the floor cost of a durable dedup claim;
(b) kici: the full durable ``PgDeliveryInbox.accept`` — body gzipped, event_log + inbox + delivery_payloads rows
    committed — with group commit on and off;
(c) kici + offloader: the grouped accept while a ``PayloadOffloader`` moves the bodies to a
    ``FilesystemBlobStore`` (fsynced files) in the background, as in a running orchestrator; the time includes
    draining what is left when the clients finish, so the figure is the sustainable end-to-end rate.

Raw, grouped and one-tx-per-accept are measured in alternating slices (4 rounds) so that all three see the same
load on a shared machine. Run: ``python bench/ingest_db.py [--quick] [--ops N] [--lanes N]``. Uses
``KICI_TEST_DATABASE_URL`` (a superuser URL on a disposable server; a scratch database is created and dropped) or
starts an embedded PostgreSQL with durable settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import psycopg
from psycopg import sql

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.inbox import COMMIT_LANES, PgDeliveryInbox
from kici_adapters.postgres.migrate import apply_migrations
from kici_adapters.postgres.offload import PayloadOffloader
from kici_adapters.postgres.pool import Database
from kici_adapters.storage import FilesystemBlobStore
from kici_core.delivery_records import Delivery

CONCURRENCY = (1, 4, 16)
LANES = COMMIT_LANES
BODY = json.dumps({"ref": "refs/heads/main", "commits": [{"id": "c" * 40, "message": "m" * 200}] * 12}).encode()


async def run_clients(concurrency: int, total: int, op: Callable[[int, int], Awaitable[None]]) -> float:
    """Run ``total`` operations split over ``concurrency`` clients; returns operations per second."""
    per_client = total // concurrency

    async def client(c: int) -> None:
        for i in range(per_client):
            await op(c, i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(concurrency):
            tg.start_soon(client, c)
    return per_client * concurrency / (time.perf_counter() - start)


async def raw_rate(url: str, concurrency: int, total: int) -> float:
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(concurrency)]
    tag = uuid.uuid4().hex[:8]
    try:

        async def op(c: int, i: int) -> None:
            await conns[c].execute(
                "INSERT INTO bench_raw (org_id, delivery_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                ("bench", f"{tag}-{c}-{i}"),
            )

        return await run_clients(concurrency, total, op)
    finally:
        for conn in conns:
            await conn.close()


async def kici_rate(
    url: str, root: Path, concurrency: int, total: int, *, group_commit: bool, offload: bool = False
) -> tuple[float, int]:
    """``accept`` rate (and commits issued); with ``offload`` a ``PayloadOffloader`` runs alongside and the
    measurement ends when every body is in object storage."""
    db = Database(url, min_size=min(concurrency, 16) + 1, max_size=max(concurrency, 4) + 1)
    await db.open()
    blobs = FilesystemBlobStore(root)
    offloader = PayloadOffloader(db, blobs, batch=256)
    inbox = PgDeliveryInbox(
        db, blobs, group_commit=group_commit, commit_lanes=LANES, on_accepted=offloader.wake if offload else None
    )
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    try:

        async def op(c: int, i: int) -> None:
            result = await inbox.accept(
                Delivery(
                    org_id="bench",
                    delivery_id=f"{tag}-{c}-{i}",
                    routing_key="github:1",
                    event="push",
                    action=None,
                    source="direct",
                    provider="github",
                    body=BODY,
                    received_at=now,
                )
            )
            assert not result.duplicate

        if not offload:
            rate = await run_clients(concurrency, total, op)
        else:
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(offloader.run)
                await run_clients(concurrency, total, op)
                while (await offloader.run_once()).moved:
                    pass
                tg.cancel_scope.cancel()
            rate = (total // concurrency) * concurrency / (time.perf_counter() - start)
        return rate, inbox.group.batches if inbox.group else total
    finally:
        await inbox.aclose()
        await db.close()


def _prepare(admin_url: str) -> tuple[str, Callable[[], None]]:
    """Create a scratch database with the schema and the raw table; returns its URL and a cleanup."""
    name = f"kici_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_raw (org_id varchar(16) NOT NULL, delivery_id text NOT NULL,"
            " received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (org_id, delivery_id))"
        )

    def cleanup() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    return url, cleanup


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    concurrency: int
    raw: float
    grouped: float
    single: float
    commits: int
    offloaded: float


async def measure(url: str, total: int, rounds: int) -> list[Row]:
    """Per concurrency: ``rounds`` alternating slices of raw / grouped / one-tx-per-accept, so that all three see
    the same machine load (the rates are total operations over total time), then the offload run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="kici-bench-blobs-") as tmp:
        for n in CONCURRENCY:
            count = max(total // rounds, n * 4)
            seconds = {"raw": 0.0, "grouped": 0.0, "single": 0.0}
            commits = 0
            for r in range(rounds):
                seconds["raw"] += count / await raw_rate(url, n, count)
                rate, batches = await kici_rate(url, Path(tmp) / f"g{n}-{r}", n, count, group_commit=True)
                seconds["grouped"] += count / rate
                commits += batches
                rate, _ = await kici_rate(url, Path(tmp) / f"s{n}-{r}", n, count, group_commit=False)
                seconds["single"] += count / rate
            ops = count * rounds
            offloaded, _ = await kici_rate(url, Path(tmp) / f"o{n}", n, ops, group_commit=True, offload=True)
            rows.append(
                Row(
                    concurrency=n,
                    raw=ops / seconds["raw"],
                    grouped=ops / seconds["grouped"],
                    single=ops / seconds["single"],
                    commits=commits,
                    offloaded=offloaded,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run of a few seconds")
    parser.add_argument("--ops", type=int, default=None, help="operations per measurement")
    parser.add_argument("--lanes", type=int, default=COMMIT_LANES, help="group-commit lanes (tuning)")
    args = parser.parse_args()
    global LANES
    LANES = args.lanes
    total = args.ops or (32 if args.quick else 1600)

    external = os.environ.get("KICI_TEST_DATABASE_URL")
    server: EmbeddedPostgres | None = None
    root: Path | None = None
    if external:
        admin_url = external
    else:
        root = Path(tempfile.mkdtemp(prefix="kici-bench-pg-"))
        server = EmbeddedPostgres(root, durable=True)
        admin_url = server.start()
    try:
        url, cleanup = _prepare(admin_url)
        try:
            rows = anyio.run(measure, url, total, 1 if args.quick else 4)
        finally:
            cleanup()
    finally:
        if server is not None:
            server.stop()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"ingest benchmark: {total} operations per measurement, body {len(BODY)} bytes, {LANES} lanes, "
        f"{'external' if external else 'embedded (durable)'} PostgreSQL"
    )
    print(
        "raw = INSERT ON CONFLICT commits; kici = PgDeliveryInbox.accept (grouped / one tx per accept);"
        " +offload = grouped accept with the PayloadOffloader writing fsynced files alongside, until drained"
    )
    print(
        f"{'conc':>4}  {'raw/s':>7}  {'kici grp/s':>10} {'ratio':>6}  {'kici 1tx/s':>10} {'ratio':>6}  "
        f"{'commits':>7}  {'+offload/s':>10} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r.concurrency:>4}  {r.raw:>7.0f}  {r.grouped:>10.0f} {r.grouped / r.raw:>6.0%}  {r.single:>10.0f} "
            f"{r.single / r.raw:>6.0%}  {r.commits:>7}  {r.offloaded:>10.0f} {r.offloaded / r.raw:>6.0%}"
        )


if __name__ == "__main__":
    main()
