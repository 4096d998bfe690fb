"""Webhook intake benchmark: through ``kici-relay`` into ``kici-server``, and straight into its direct route.

Starts an embedded PostgreSQL (or uses ``--database-url``), ``kici-relay serve`` and ``kici-server`` in hybrid
mode as separate processes, registers one GitHub App source on both, then posts signed GitHub ``ping``
deliveries (unique delivery ids, so every one is durably accepted; ``ping`` keeps processing trivial) at a
fixed concurrency:

* relay path: HTTP POST to the relay → chunked relay → verification → durable acceptance → ``webhook.ack`` →
  HTTP 200. The latency of that POST is "HTTP in to webhook.ack".
* direct path: HTTP POST to the orchestrator's ``/webhook/<org>/github`` → durable acceptance → 200/202.

Prints deliveries per second, p50/p99 latency and the CPU time each server process spent per delivery (a
steadier figure than throughput on a shared machine) for both paths, and the relay/direct ratio.

Usage: python bench/relay.py [--quick] [--requests N] [--concurrency 16] [--database-url URL]
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
import uuid
from pathlib import Path

import anyio
import harness
import psutil

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.migrate import apply_migrations_async
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.secrets import PgSecretStore
from kici_core.ports import GitHubSource

ORG = "bench"
APP_ID = "424242"
WEBHOOK_SECRET = "bench-webhook-secret"
SECRET_KEY = "cd" * 32
BIN = Path(sys.executable).parent


def _body(delivery: str) -> bytes:
    return json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1, "delivery": delivery,
                       "hook": {"type": "App", "app_id": int(APP_ID)}}).encode()


def _headers(body: bytes, delivery: str) -> dict[str, str]:
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-GitHub-Event": "ping", "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": APP_ID, "X-Hub-Signature-256": sig}


def _request(delivery: str) -> tuple[bytes, dict[str, str]]:
    body = _body(delivery)
    return body, _headers(body, delivery)


async def _prepare_database(url: str) -> None:
    await apply_migrations_async(url)
    db = Database(url, max_size=2)
    await db.open()
    try:
        source_id = str(uuid.uuid4())
        await PgSourceStore(db).add_github(GitHubSource(id=source_id, routing_key=f"github:{APP_ID}",
                                                        name="bench-app", app_id=APP_ID, customer_id=ORG))
        await PgSecretStore(db, bytes.fromhex(SECRET_KEY)).put("__system__", f"__source__/{source_id}",
                                                                "webhookSecret", WEBHOOK_SECRET)
    finally:
        await db.close()


def run(args: argparse.Namespace) -> None:
    """Start PostgreSQL, the relay and the orchestrator, measure both paths, stop everything."""
    work = Path(tempfile.mkdtemp(prefix="kici-bench-"))
    pg: EmbeddedPostgres | None = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = args.database_url
        if not url:
            pg_root = Path(tempfile.mkdtemp(prefix="kici-bench-pg-"))  # reachable by the server's own account
            pg = EmbeddedPostgres(pg_root, durable=True)
            url = pg.start()
        anyio.run(_prepare_database, url)
        relay_port, orch_port = harness.free_port(), harness.free_port()
        relay_env = {**{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
                     "KICI_RELAY_DB": str(work / "relay.sqlite3")}
        relay_cmd = str(BIN / "kici-relay")
        subprocess.run([relay_cmd, "source", "add", "github", "--org", ORG, "--app-id", APP_ID,
                        "--webhook-secret", WEBHOOK_SECRET], env=relay_env, check=True, capture_output=True)
        token = subprocess.run([relay_cmd, "key", "create", "--org", ORG, "--name", "bench"], env=relay_env,
                               check=True, capture_output=True).stdout.decode().strip()
        procs.append(subprocess.Popen([relay_cmd, "serve", "--port", str(relay_port), "--log-level", "warning"],
                                      env=relay_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        orch_env = {**{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
                    "KICI_MODE": "hybrid", "KICI_PLATFORM_URL": f"ws://127.0.0.1:{relay_port}/ws",
                    "KICI_PLATFORM_TOKEN": token, "KICI_DATABASE_URL": url, "KICI_SECRET_KEY": SECRET_KEY,
                    "KICI_HOST": "127.0.0.1", "KICI_PORT": str(orch_port), "KICI_DATA_DIR": str(work / "data"),
                    "KICI_LOG_LEVEL": "warn"}
        procs.append(subprocess.Popen([str(BIN / "kici-server")], env=orch_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        anyio.run(_measure, args, relay_port, orch_port, psutil.Process(procs[0].pid), psutil.Process(procs[1].pid))
    finally:
        harness.stop(procs, pg, work)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def _measure(args: argparse.Namespace, relay_port: int, orch_port: int, relay: psutil.Process,
                   orch: psutil.Process) -> None:
    await harness.wait_http(f"http://127.0.0.1:{relay_port}/api/connections", ready=f"github:{APP_ID}")
    relay_url = f"http://127.0.0.1:{relay_port}/webhook/{ORG}/github"
    direct_url = f"http://127.0.0.1:{orch_port}/webhook/{ORG}/github"
    await harness.load(relay_url, _request, requests=max(20, args.requests // 10), concurrency=args.concurrency,
                       prefix="warm")
    results = {}
    for name, target in (("relay", relay_url), ("direct", direct_url)):
        cpu_relay, cpu_orch = _cpu(relay), _cpu(orch)
        elapsed, lat, failed, _ids = await harness.load(target, _request, requests=args.requests,
                                                        concurrency=args.concurrency, prefix=name)
        per = 1000 / args.requests
        cpu = f"cpu/delivery: relay {(_cpu(relay) - cpu_relay) * per:4.2f} ms, orchestrator {(_cpu(orch) - cpu_orch) * per:4.2f} ms"
        results[name] = args.requests / elapsed
        print(f"{name:6s}: {args.requests} deliveries at concurrency {args.concurrency}: "
              f"{results[name]:8.1f}/s  p50 {harness.pct(lat, 0.50):6.1f} ms  p99 {harness.pct(lat, 0.99):6.1f} ms"
              f"  failures {failed}  {cpu}")
    ratio = results["relay"] / results["direct"]
    print(f"relay/direct throughput: {ratio:.0%} (target >= 70%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test of the benchmark)")
    parser.add_argument("--requests", type=int, default=2000, help="deliveries per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database-url", default=os.environ.get("KICI_BENCH_DATABASE_URL"),
                        help="use this PostgreSQL instead of an embedded one")
    args = parser.parse_args()
    if args.quick:
        args.requests = 100
    run(args)


if __name__ == "__main__":
    main()
