"""Direct webhook intake benchmark: signed GitHub push webhooks into ``kici-standalone`` under uvicorn.

Starts an embedded PostgreSQL 18 (or uses ``--database-url``), a local server speaking GitHub's REST API
(it serves the lock file, which the orchestrator then caches) and ``kici-standalone`` as a separate process,
registers one GitHub App source, and posts signed ``push`` webhooks with unique delivery ids at concurrency 1,
16 and 64. For each concurrency it prints:

* accepted deliveries per second and p50/p99 latency of the 2xx (durable acceptance);
* the orchestrator process's CPU time per accepted delivery while the load ran (it includes the background
  processing that ran meanwhile; steadier than throughput on a machine shared with other work);
* p50/p99 time from acceptance to ``processed`` (event_log ``processed_at - received_at``: lock file from the
  cache, trigger matching, run + jobs + queue rows written);
* processed deliveries per second (the deliveries over the time from the first acceptance to the last
  ``processed_at``), next to accepted/s, and their ratio: below 100% a burst leaves a backlog behind; and the
  processing children's CPU time per delivery, until the last one was processed;
* with the embedded PostgreSQL, the database server's CPU time per delivery over the same span (its backends
  serve intake and processing alike);
* measured in the same run against the same server, the raw rate of single-row ``INSERT ... ON CONFLICT``
  commits at that concurrency, and the ratio.

With ``--processing-workers N`` the orchestrator processes deliveries in N child processes; the CPU column then
counts the children too.

Usage: python bench/ingest_http.py [--quick] [--requests N] [--database-url URL] [--processing-workers N]
       [--branch NAME] [--server-log FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import harness
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.migrate import apply_migrations_async
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.secrets import PgSecretStore
from kici_adapters.postgres.sources import PgSourceStore
from kici_core.source_records import GitHubSource
from tests.support.github_server import GitHubServer, app_key

ORG = "bench"
APP_ID = "515151"
REPO = "acme/app"
SHA = "5" * 40
WEBHOOK_SECRET = "bench-webhook-secret"
SECRET_KEY = "ab" * 32
BIN = Path(sys.executable).parent
LOCKFILE = {
    "schemaVersion": 29,
    "source": {"file": ".kici/workflows/ci.ts"},
    "contentHash": "bench",
    "workflows": [
        {
            "name": f"wf-{i}",
            "triggers": [
                {
                    "_type": "push",
                    "branches": [{"type": "glob", "pattern": "main" if i % 2 == 0 else "release/*"}],
                    "paths": [],
                }
            ],
            "jobs": [
                {
                    "_type": "static",
                    "name": "build",
                    "runsOn": [{"kind": "exact", "value": "linux"}],
                    "needs": [],
                    "steps": [{"name": "b", "run": "true"}],
                }
            ],
        }
        for i in range(10)
    ],
}


BRANCH = "main"
"""Where the pushes go (``--branch``): the default branch also re-registers the lock file's workflows."""


def _request(delivery: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "ref": f"refs/heads/{BRANCH}",
            "before": "0" * 40,
            "after": SHA,
            "repository": {"full_name": REPO, "default_branch": "main", "clone_url": f"https://github.com/{REPO}.git"},
            "sender": {"login": "bench", "id": 1},
            "installation": {"id": 1},
        }
    ).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": APP_ID,
        "X-Hub-Signature-256": sig,
    }


async def _prepare(url: str) -> None:
    await apply_migrations_async(url)
    db = Database(url, max_size=2)
    await db.open()
    try:
        sid = str(uuid.uuid4())
        await PgSourceStore(db).add_github(
            GitHubSource(id=sid, routing_key=f"github:{APP_ID}", name="bench", app_id=APP_ID, customer_id=ORG)
        )
        secrets = PgSecretStore(db, bytes.fromhex(SECRET_KEY))
        await secrets.put("__system__", f"__source__/{sid}", "webhookSecret", WEBHOOK_SECRET)
        await secrets.put("__system__", f"__source__/{sid}", "privateKey", app_key(0).private_pem)
    finally:
        await db.close()


async def _raw_rate(url: str, concurrency: int, total: int) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id text PRIMARY KEY, at timestamptz DEFAULT now())")
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(concurrency)]
    counter = iter(range(total))
    prefix = uuid.uuid4().hex

    async def worker(conn: psycopg.AsyncConnection) -> None:  # type: ignore[type-arg]
        for i in counter:
            await conn.execute("INSERT INTO bench_raw (id) VALUES (%s) ON CONFLICT DO NOTHING", (f"{prefix}{i}",))

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in conns:
            tg.start_soon(worker, c)
    elapsed = time.perf_counter() - began
    for c in conns:
        await c.close()
    return total / elapsed


async def _processing_latency(url: str, ids: list[str], seconds: float = 120) -> tuple[list[float], float]:
    """Wait until every delivery is processed; returns processed_at - received_at per delivery and the
    processed deliveries per second (from the first acceptance to the last processing)."""
    deadline = time.monotonic() + seconds
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            # Wait on the inbox's pending rows first (a read of a small index): the summary below looks up every
            # delivery and, polled while processing ran, cost the database about as much as processing them did.
            cur = await conn.execute("SELECT count(*) FROM delivery_inbox WHERE state = 'pending'")
            waiting = await cur.fetchone()
            if waiting is not None and waiting[0] and time.monotonic() < deadline:
                await anyio.sleep(0.2)
                continue
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE processed_at IS NULL), "
                "array_agg(extract(epoch FROM processed_at - received_at)) FILTER (WHERE processed_at IS NOT NULL), "
                "count(processed_at), extract(epoch FROM max(processed_at) - min(received_at)) "
                "FROM event_log WHERE org_id = %s AND delivery_id = ANY(%s)",
                (ORG, ids),
            )
            row = await cur.fetchone()
            assert row is not None
            pending, lat, done, span = row
            if pending == 0 or time.monotonic() > deadline:
                return [float(x) for x in (lat or [])], (done / float(span) if span else 0.0)
            await anyio.sleep(0.2)


def _children_cpu(server: psutil.Process) -> float:
    """CPU seconds of the orchestrator's processing children (0 when it processes in-process)."""
    return harness.cpu_seconds(server) - sum(server.cpu_times()[:2])


def _postmaster(pg: EmbeddedPostgres | None) -> psutil.Process | None:
    """The embedded PostgreSQL's postmaster (its backends are its children), or None."""
    if pg is None:
        return None
    try:
        return psutil.Process(int((pg.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]))
    except (OSError, ValueError, psutil.Error):
        return None


async def _measure(
    args: argparse.Namespace, url: str, port: int, server: psutil.Process, db: psutil.Process | None
) -> None:
    await harness.wait_http(f"http://127.0.0.1:{port}/health")
    target = f"http://127.0.0.1:{port}/webhook/{ORG}/github"
    await harness.load(target, _request, requests=20, concurrency=4, prefix="warm")
    print(
        f"{'conc':>4}  {'accepted/s':>10}  {'processed/s':>11}  {'proc/acc':>8}  {'2xx p50':>8}  {'2xx p99':>8}  "
        f"{'cpu/dlv':>8}  {'proc cpu':>8}  {'db cpu':>8}  {'proc p50':>8}  {'proc p99':>8}  "
        f"{'raw ins/s':>9}  {'ratio':>6}"
    )
    for conc in args.concurrency:
        n = args.requests if conc > 1 else max(50, args.requests // 8)
        cpu_before = harness.cpu_seconds(server)
        children_before = _children_cpu(server)
        db_before = harness.cpu_seconds(db) if db is not None else 0.0
        elapsed, lat, failed, ids = await harness.load(
            target, _request, requests=n, concurrency=conc, prefix=f"c{conc}"
        )
        cpu = (harness.cpu_seconds(server) - cpu_before) * 1000 / max(1, len(ids))
        proc, processed = await _processing_latency(url, ids)
        children_cpu = (_children_cpu(server) - children_before) * 1000 / max(1, len(ids))
        db_cpu = (harness.cpu_seconds(db) - db_before) * 1000 / max(1, len(ids)) if db is not None else float("nan")
        raw = await _raw_rate(url, conc, n)
        rate = len(ids) / elapsed
        print(
            f"{conc:>4}  {rate:>10.1f}  {processed:>11.1f}  {processed / rate:>8.0%}  "
            f"{harness.pct(lat, 0.5):>7.1f}ms  {harness.pct(lat, 0.99):>7.1f}ms  "
            f"{cpu:>6.2f}ms  {children_cpu:>6.2f}ms  {db_cpu:>6.2f}ms  "
            f"{harness.pct(proc, 0.5):>7.1f}ms  {harness.pct(proc, 0.99):>7.1f}ms  {raw:>9.1f}  {rate / raw:>6.0%}"
            + (f"  ({failed} failed)" if failed else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test of the benchmark)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--server-log", default=None, help="write the orchestrator's output to this file")
    parser.add_argument(
        "--branch",
        default="main",
        help="branch pushed to (default main, the default branch; release/1 matches the other half "
        "of the workflows without registering them)",
    )
    parser.add_argument(
        "--processing-workers",
        type=int,
        default=None,
        help="KICI_PROCESSING_WORKERS for the orchestrator (default: its own default)",
    )
    args = parser.parse_args()
    global BRANCH
    BRANCH = args.branch
    if args.quick:
        args.requests, args.concurrency = 60, [1, 16]
    work = Path(tempfile.mkdtemp(prefix="kici-bench-"))
    pg: EmbeddedPostgres | None = None
    proc: subprocess.Popen[bytes] | None = None
    with GitHubServer() as gh:
        gh.add_app(APP_ID, app_key(0).public_pem)
        gh.add_installation(1, app_id=APP_ID, repos=[REPO])
        gh.put_file(REPO, SHA, ".kici/kici.lock.json", json.dumps(LOCKFILE).encode())
        try:
            url = args.database_url
            if not url:
                pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="kici-bench-pg-")), durable=True)
                url = pg.start()
            anyio.run(_prepare, url)
            port = harness.free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
                "KICI_MODE": "independent",
                "KICI_DATABASE_URL": url,
                "KICI_SECRET_KEY": SECRET_KEY,
                "KICI_HOST": "127.0.0.1",
                "KICI_PORT": str(port),
                "KICI_DATA_DIR": str(work / "data"),
                "KICI_LOG_LEVEL": "warn",
                "GITHUB_API_URL": gh.url,
                "KICI_BOOTSTRAP_ADMIN_TOKEN": "bench-admin-token-0123456789",
            }
            if args.processing_workers is not None:
                env["KICI_PROCESSING_WORKERS"] = str(args.processing_workers)
            log = open(args.server_log, "ab") if args.server_log else subprocess.DEVNULL
            proc = subprocess.Popen([str(BIN / "kici-standalone")], env=env, stdout=log, stderr=log)
            anyio.run(_measure, args, url, port, psutil.Process(proc.pid), _postmaster(pg))
        finally:
            harness.stop([proc] if proc is not None else [], pg, work)


if __name__ == "__main__":
    main()
