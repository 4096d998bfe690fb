"""Webhook intake benchmark: through ``kici-relay`` into ``kici-server``, and straight into its direct route.

Starts an embedded PostgreSQL (or uses ``--database-url``), ``kici-relay serve`` and ``kici-server`` in hybrid
mode as separate processes, registers one GitHub App source on both, then posts signed GitHub ``ping``
deliveries (unique delivery ids, so every one is durably accepted; ``ping`` keeps processing trivial) at a
fixed concurrency:

* relay path: HTTP POST to the relay → chunked relay → verification → durable acceptance → ``webhook.ack`` →
  HTTP 200. The latency of that POST is "HTTP in to webhook.ack".
* direct path: HTTP POST to the orchestrator's ``/webhook/<org>/github`` → durable acceptance → 200/202.

Prints deliveries per second, p50/p99 latency and the CPU time each server process spent per delivery (a
steadier figure than throughput on a shared machine) for both paths, and the relay/direct ratio. Each path
starts once the processing and payload offload of everything sent before it is finished.

Both paths are measured under two CPU placements (Linux, two or more CPUs):

* ``split``: the orchestrator side (``kici-server``, its processing child, PostgreSQL) on one half of the CPUs,
  the outside world (``kici-relay`` standing in for the hosted Platform, and this load generator) on the other.
  This is the deployment the comparison is about: the Platform runs elsewhere, so the ratio says how much of
  the orchestrator's direct intake capacity remains when webhooks come through the relay.
* ``shared``: every process on every CPU, so the relay stand-in takes its CPU from the orchestrator.

Usage: python bench/relay.py [--quick] [--requests N] [--concurrency 16] [--placement both|split|shared]
       [--only relay|direct] [--breakdown] [--database-url URL]
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
from collections.abc import Callable
from pathlib import Path

import anyio
import harness
import psutil
import psycopg

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.migrate import apply_migrations_async
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.secrets import PgSecretStore
from kici_adapters.postgres.sources import PgSourceStore
from kici_core.source_records import GitHubSource

ORG = "bench"
APP_ID = "424242"
WEBHOOK_SECRET = "bench-webhook-secret"
SECRET_KEY = "cd" * 32
BIN = Path(sys.executable).parent


def _body(delivery: str) -> bytes:
    return json.dumps(
        {
            "zen": "Keep it logically awesome.",
            "hook_id": 1,
            "delivery": delivery,
            "hook": {"type": "App", "app_id": int(APP_ID)},
        }
    ).encode()


def _headers(body: bytes, delivery: str) -> dict[str, str]:
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": APP_ID,
        "X-Hub-Signature-256": sig,
    }


def _request(delivery: str) -> tuple[bytes, dict[str, str]]:
    body = _body(delivery)
    return body, _headers(body, delivery)


async def _prepare_database(url: str) -> None:
    await apply_migrations_async(url)
    db = Database(url, max_size=2)
    await db.open()
    try:
        source_id = str(uuid.uuid4())
        await PgSourceStore(db).add_github(
            GitHubSource(id=source_id, routing_key=f"github:{APP_ID}", name="bench-app", app_id=APP_ID, customer_id=ORG)
        )
        await PgSecretStore(db, bytes.fromhex(SECRET_KEY)).put(
            "__system__", f"__source__/{source_id}", "webhookSecret", WEBHOOK_SECRET
        )
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
        relay_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
            "KICI_RELAY_DB": str(work / "relay.sqlite3"),
        }
        relay_cmd = str(BIN / "kici-relay")
        subprocess.run(
            [
                relay_cmd,
                "source",
                "add",
                "github",
                "--org",
                ORG,
                "--app-id",
                APP_ID,
                "--webhook-secret",
                WEBHOOK_SECRET,
            ],
            env=relay_env,
            check=True,
            capture_output=True,
        )
        token = (
            subprocess.run(
                [relay_cmd, "key", "create", "--org", ORG, "--name", "bench"],
                env=relay_env,
                check=True,
                capture_output=True,
            )
            .stdout.decode()
            .strip()
        )
        procs.append(
            subprocess.Popen(
                [relay_cmd, "serve", "--port", str(relay_port), "--log-level", "warning"],
                env=relay_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        orch_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
            "KICI_MODE": "hybrid",
            "KICI_PLATFORM_URL": f"ws://127.0.0.1:{relay_port}/ws",
            "KICI_PLATFORM_TOKEN": token,
            "KICI_DATABASE_URL": url,
            "KICI_SECRET_KEY": SECRET_KEY,
            "KICI_HOST": "127.0.0.1",
            "KICI_PORT": str(orch_port),
            "KICI_DATA_DIR": str(work / "data"),
            "KICI_LOG_LEVEL": "warn",
        }
        procs.append(
            subprocess.Popen(
                [str(BIN / "kici-server")], env=orch_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        anyio.run(
            _measure,
            args,
            url,
            relay_port,
            orch_port,
            psutil.Process(procs[0].pid),
            psutil.Process(procs[1].pid),
            pg_root if pg is not None else None,
        )
    finally:
        harness.stop(procs, pg, work)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds per live process (kernel threads included), keyed by pid, with a short label."""
    found: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:
            continue
        name = proc.info["name"] or "?"
        cmd = " ".join(proc.info["cmdline"] or [])
        if name.startswith("postgres"):
            label = "postgres (all backends)"
        elif not cmd:  # kernel threads rename themselves with the work they do
            label = "kernel threads"
        elif "kici_runtime.orchestrator.processing" in cmd:
            label = "processing child"
        else:
            label = Path(
                cmd.split()[1] if cmd.startswith(sys.executable) and len(cmd.split()) > 1 else cmd.split()[0]
            ).name
        found[proc.pid] = (label, float(times.user + times.system))
    return found


def _breakdown(before: dict[int, tuple[str, float]], per: float) -> str:
    spent: dict[str, float] = {}
    for pid, (label, seconds) in _process_cpu().items():
        if pid in before:  # a process started meanwhile (or a reused pid) would count its whole life
            spent[label] = spent.get(label, 0.0) + (seconds - before[pid][1]) * per
    top = sorted(spent.items(), key=lambda item: -item[1])[:7]
    return ", ".join(f"{cmd} {ms:.2f}" for cmd, ms in top if ms >= 0.01)


def _busy() -> float:
    """CPU seconds the whole machine spent busy (every process: servers, PostgreSQL, this load generator)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


async def _backlog(url: str) -> int:
    """Accepted deliveries not yet processed plus bodies not yet moved to object storage."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM delivery_inbox WHERE state = 'pending')"
            " + (SELECT count(*) FROM delivery_payloads)"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _settle(url: str, seconds: float = 120) -> float:
    """Wait until the background work of the deliveries sent so far is done; returns the seconds waited."""
    began = time.perf_counter()
    while await _backlog(url) and time.perf_counter() - began < seconds:  # noqa: ASYNC110 - polls the database
        await anyio.sleep(0.05)
    return time.perf_counter() - began


def _pin(proc: psutil.Process, cpus: set[int]) -> None:
    """Bind every thread of ``proc`` to ``cpus`` (threads and processes it starts later inherit it)."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
    except OSError:
        return
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # the thread ended meanwhile
            pass


def _placements(
    args: argparse.Namespace, relay: psutil.Process, orch: psutil.Process, pg_root: Path | None
) -> list[tuple[str, Callable[[], None]]]:
    """The CPU placements to measure under, each with the function that applies it."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    inside_procs = [orch, *orch.children(recursive=True)]
    if pg_root is not None:  # the embedded server: its postmaster (backends started later inherit) and backends
        for proc in psutil.process_iter(["cmdline"]):
            if str(pg_root) in " ".join(proc.info["cmdline"] or []):
                inside_procs += [proc, *proc.children(recursive=True)]
    outside_procs = [relay, psutil.Process()]

    def place(inside: set[int], outside: set[int]) -> Callable[[], None]:
        def apply() -> None:
            for proc in inside_procs:
                _pin(proc, inside)
            for proc in outside_procs:
                _pin(proc, outside)

        return apply

    found: list[tuple[str, Callable[[], None]]] = []
    if args.placement in ("both", "split") and len(cpus) >= 2 and pg_root is not None:
        half = len(cpus) // 2
        found.append(("split", place(set(cpus[half:]), set(cpus[:half]))))
    elif args.placement == "split":
        print("split placement needs Linux, two CPUs and the embedded PostgreSQL; measuring shared only")
    if args.placement in ("both", "shared") or not found:
        found.append(("shared", place(set(cpus), set(cpus)) if cpus else lambda: None))
    return found


async def _measure(
    args: argparse.Namespace,
    url: str,
    relay_port: int,
    orch_port: int,
    relay: psutil.Process,
    orch: psutil.Process,
    pg_root: Path | None,
) -> None:
    await harness.wait_http(f"http://127.0.0.1:{relay_port}/api/connections", ready=f"github:{APP_ID}")
    relay_url = f"http://127.0.0.1:{relay_port}/webhook/{ORG}/github"
    direct_url = f"http://127.0.0.1:{orch_port}/webhook/{ORG}/github"
    await harness.load(
        relay_url, _request, requests=max(20, args.requests // 10), concurrency=args.concurrency, prefix="warm"
    )
    for placement, apply in _placements(args, relay, orch, pg_root):
        apply()
        print(f"placement {placement}:")
        results = {}
        for name, target in (("relay", relay_url), ("direct", direct_url)):
            if args.only and name != args.only:
                continue
            results[name] = await _path(args, url, name, target, relay, orch)
        if len(results) == 2:
            ratio = results["relay"] / results["direct"]
            print(f"  relay/direct throughput ({placement}): {ratio:.0%} (target >= 70%)")


async def _path(
    args: argparse.Namespace, url: str, name: str, target: str, relay: psutil.Process, orch: psutil.Process
) -> float:
    """Measure one path; returns its deliveries per second."""
    await _settle(url)  # each path starts with no work left over from the one before
    cpu_relay, cpu_orch, busy = _cpu(relay), _cpu(orch), _busy()
    processes = _process_cpu() if args.breakdown else {}
    elapsed, lat, failed, _ids = await harness.load(
        target, _request, requests=args.requests, concurrency=args.concurrency, prefix=name
    )
    per = 1000 / args.requests
    cpu = (
        f"cpu/delivery: relay {(_cpu(relay) - cpu_relay) * per:4.2f} ms, orchestrator "
        f"{(_cpu(orch) - cpu_orch) * per:4.2f} ms, machine {(_busy() - busy) * per:4.2f} ms"
    )
    rate = args.requests / elapsed
    print(
        f"  {name:6s}: {args.requests} deliveries at concurrency {args.concurrency}: "
        f"{rate:8.1f}/s  p50 {harness.pct(lat, 0.50):6.1f} ms  p99 {harness.pct(lat, 0.99):6.1f} ms"
        f"  failures {failed}  {cpu}"
    )
    if args.breakdown:
        print(f"          intake CPU/delivery (ms): {_breakdown(processes, per)}")
    drained = await _settle(url)
    print(
        f"          processing and payload offload finished {drained:.1f} s later; machine CPU/delivery "
        f"including them {(_busy() - busy) * per:4.2f} ms"
    )
    if args.breakdown:
        print(f"          with processing (ms): {_breakdown(processes, per)}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test of the benchmark)")
    parser.add_argument("--requests", type=int, default=2000, help="deliveries per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--placement",
        choices=("both", "split", "shared"),
        default="both",
        help="CPU placement(s) to measure under (see the module docstring)",
    )
    parser.add_argument("--only", choices=("relay", "direct"), help="measure one path only (for profiling)")
    parser.add_argument("--breakdown", action="store_true", help="print the busiest processes per delivery")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("KICI_BENCH_DATABASE_URL"),
        help="use this PostgreSQL instead of an embedded one",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests = 100
    run(args)


if __name__ == "__main__":
    main()
