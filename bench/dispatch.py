"""Dispatch benchmark: webhook 2xx -> ``job.dispatch`` latency, memory and idle CPU as connected agents grow.

Starts an embedded PostgreSQL 18 (or uses ``--database-url``) and ``kici-standalone`` as a separate process
(``KICI_AGENT_AUTH=none``), registers a ``local`` source over the admin API whose repository is a git repo in a
temp directory (its lock file has one workflow with one job on label ``bench``), then, in one run:

1. connects ``--eligible`` (100) simulated agents on label ``bench`` (plain WebSocket clients: ``agent.register``
   with the auto-labels the reference agent sends, its own ``kici:host:*`` included; then for every
   ``job.dispatch`` at once ``job.ack``, ``job.status running`` and ``job.status success``);
2. baseline, N = eligible: sends ``--webhooks`` HMAC-signed push webhooks at ``--rate``/s and measures, per
   webhook, the time from its 2xx to the ``job.dispatch`` of its run arriving at an agent (runs are matched to
   deliveries through the database); then the orchestrator's CPU over ``--window`` seconds with the agents idle;
3. connects more agents until ``--agents`` N are connected (the others on 50 label sets none of which is
   eligible, each with its own host label, sending ``heartbeat`` every 30 s; they live in a child process of the
   benchmark at the lowest CPU priority, so the process that measures holds the same 100 agents in both
   phases and their clients' CPU is not taken from the orchestrator), then measures idle CPU again, the
   orchestrator's memory (RSS of the serving process and its processing children) and the same webhook phase;
4. prints both phases side by side with the ratio of N to the baseline.

First of all it times the sans-I/O dispatcher alone (no sockets, no database) per job with the eligible agents
and with N agents connected: the cost that must not grow with the fleet, without the machine's noise.

Targets (N = 10,000, 100 eligible): p99 < 50 ms at 50 webhooks/s; under 50 KiB per idle agent and under
600 MiB in all; idle CPU under 10% of a core.

With ``--processing-workers N`` deliveries are processed in N child processes of the orchestrator.

Usage: python bench/dispatch.py [--agents N] [--quick] [--database-url URL] [--processing-workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import harness
import httpx
import psutil
import psycopg
from dispatch_fleet import AUTO_LABELS, Workers, idle_agents_child, idle_agents_elsewhere
from dispatch_report import Phase, report, total_rss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_adapters.postgres.migrate import apply_migrations_async
from kici_core import dispatch_effects as fx
from kici_core import routing
from kici_core.dispatch import Dispatcher

ORG = "bench"
SOURCE = f"dispatch-{uuid.uuid4().hex[:8]}"  # unique, so runs can share one --database-url
SECRET = "bench-dispatch-secret"
ADMIN_TOKEN = "kat-bench-dispatch-" + "0" * 24
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ setup
def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.com",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def make_repo(root: Path) -> tuple[Path, str]:
    """A git repository whose lock file runs one job on label ``bench`` for every push to ``main``."""
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    lock = {
        "schemaVersion": 29,
        "source": {"file": ".kici/workflows/ci.ts"},
        "contentHash": "bench",
        "workflows": [
            {
                "name": "bench",
                "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
                "jobs": [
                    {
                        "_type": "static",
                        "name": "job",
                        "runsOn": [{"kind": "exact", "value": "bench"}],
                        "needs": [],
                        "steps": [{"name": "s", "run": "true"}],
                    }
                ],
            }
        ],
    }
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    _git(root, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "bench")
    return repo, _git(repo, "rev-parse", "HEAD")


async def register_source(base: str, repo: Path) -> None:
    """The ``local`` source, over the admin API, verified with HMAC-SHA256 and without a rate limit in the way."""
    body = {
        "orgId": ORG,
        "name": SOURCE,
        "providerType": "local",
        "gitConfig": {"url": repo.as_uri()},
        "verificationMethod": "hmac_sha256",
        "verificationConfig": {"secret": SECRET},
        "eventTypeHeader": "x-event-type",
        "rateLimitRpm": 1_000_000,
    }
    async with httpx.AsyncClient(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        r = await http.post("/api/v1/admin/generic-sources", json=body)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"source registration failed: HTTP {r.status_code} {r.text[:300]}")


def webhook(repo: Path, sha: str, delivery: str) -> tuple[bytes, dict[str, str]]:
    """A signed generic ``push`` for ``delivery``."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {
                "full_name": "bench/repo",
                "name": "repo",
                "default_branch": "main",
                "clone_url": repo.as_uri(),
            },
            "sender": {"login": "bench", "id": 1},
        }
    ).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-Signature-256": sig,
        "X-Delivery-Id": delivery,
        "X-Event-Type": "push",
    }


# ------------------------------------------------------------------------------------------------ measure
async def send_webhooks(
    base: str, repo: Path, sha: str, *, count: int, rate: float
) -> tuple[dict[str, float], dict[str, float], int]:
    """Post ``count`` webhooks at ``rate``/s; returns delivery id -> perf_counter and -> epoch seconds at its
    2xx, and the number of failures. Requests are built and signed before the first is sent and go out over
    kept-alive plain HTTP/1.1 connections (:mod:`harness`): a full client costs about a millisecond of CPU a
    request in the process that also takes the timestamps."""
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/webhook/{ORG}/generic/{SOURCE}"
    prepared: list[tuple[str, bytes]] = []
    for i in range(count):
        delivery = f"d{i}-{uuid.uuid4().hex}"
        body, headers = webhook(repo, sha, delivery)
        prepared.append((delivery, harness._encode(f"{host}:{port}", path, body, headers)))
    accepted: dict[str, float] = {}
    wall: dict[str, float] = {}
    failures = 0
    idle: list[harness._Connection] = []

    async def post(delivery: str, raw: bytes) -> None:
        nonlocal failures
        conn = idle.pop() if idle else harness._Connection(host, port)
        try:
            status, text = await conn.exchange(raw)
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            # A kept-alive connection the server closed as it was reused: send again (same delivery id, so a
            # delivery that did arrive is answered as a duplicate and counted once).
            await conn.aclose()
            status, text = await conn.exchange(raw)
        if status in (200, 202):
            accepted[delivery] = time.perf_counter()
            wall[delivery] = time.time()
        else:
            if not failures:
                print(f"first failure: HTTP {status} {text[:200]!r}")
            failures += 1
        idle.append(conn)

    try:
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, (delivery, raw) in enumerate(prepared):
                delay = began + i / rate - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)  # pacing the load generator
                tg.start_soon(post, delivery, raw)
    finally:
        for conn in idle:
            await conn.aclose()
    return accepted, wall, failures


async def delivery_runs(url: str) -> dict[str, str]:
    """delivery id (as sent) -> run id, from ``execution_runs.delivery_id`` (``<routing key>:<delivery>``)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT delivery_id, run_id::text FROM execution_runs")
        return {str(d).rsplit(":", 1)[-1]: str(r) for d, r in await cur.fetchall()}


async def processed_at(url: str) -> dict[str, float]:
    """run id -> epoch seconds at which its delivery's processing committed (``event_log.processed_at``)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT r.run_id::text, extract(epoch FROM e.processed_at)::float8"
            " FROM execution_runs r JOIN event_log e ON e.delivery_id = r.delivery_id"
            " AND e.org_id = r.org_id WHERE e.processed_at IS NOT NULL"
        )
        return {str(r): float(t) for r, t in await cur.fetchall()}


async def wait_until(check: Any, seconds: float, what: str) -> None:
    with anyio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - database state, no event to wait on
            await anyio.sleep(0.2)  # a benchmark may poll the database


def core_cost(agents: int, eligible: int, jobs: int = 2000) -> float:
    """Microseconds of the sans-I/O dispatcher per job (queued, dispatched, acked, running, success) with
    ``agents`` connected, ``eligible`` of them on the job's label; the rest on 50 other label sets. Every agent
    has its own host label, as real agents do."""
    d = Dispatcher()
    now = 0.0
    for i in range(agents):
        name = f"w{i}" if i < eligible else f"idle-{i}"
        own = ["bench"] if i < eligible else ["idle", f"pool-{i % 50}"]
        labels = routing.AgentLabels(
            labels=frozenset([*own, *AUTO_LABELS, f"kici:host:{name}"]), platform="linux", arch="x64"
        )
        d.agent_registered(agent_id=name, connection_id=name, labels=labels, now=now)
    selector = routing.compile_selector([{"kind": "exact", "value": "bench"}])
    began = time.perf_counter()
    for j in range(jobs):
        now += 0.02
        job_id = f"j{j}"
        effects = d.job_queued(job_id=job_id, run_id=job_id, selector=selector, created_at=now, now=now)
        [agent_id] = [e.agent_id for e in effects if isinstance(e, fx.MarkDispatched)]
        d.job_acked(agent_id=agent_id, job_id=job_id, now=now)
        d.job_status(agent_id=agent_id, job_id=job_id, state="running", now=now)
        d.job_status(agent_id=agent_id, job_id=job_id, state="success", now=now)
    return (time.perf_counter() - began) / jobs * 1e6


async def webhook_phase(
    args: argparse.Namespace,
    url: str,
    base: str,
    proc: psutil.Process,
    repo: Path,
    sha: str,
    workers: Workers,
    phase: Phase,
) -> None:
    cpu_before = harness.cpu_seconds(proc)
    began = time.perf_counter()
    accepted, accepted_wall, phase.failed = await send_webhooks(base, repo, sha, count=args.webhooks, rate=args.rate)
    send_seconds = time.perf_counter() - began
    runs: dict[str, str] = {}

    async def all_dispatched() -> bool:
        runs.update(await delivery_runs(url))
        return all(runs.get(d) in workers.dispatched for d in accepted)

    try:
        await wait_until(all_dispatched, 120, "every run dispatched")
    except TimeoutError:
        print("warning: not every accepted webhook reached an agent within 120 s")
    busy = harness.cpu_seconds(proc) - cpu_before
    phase.accepted = len(accepted)
    phase.rate = len(accepted) / send_seconds
    phase.latencies = [
        workers.dispatched[runs[d]] - t for d, t in accepted.items() if runs.get(d) in workers.dispatched
    ]
    phase.busy_cpu = busy / max(send_seconds, 1e-9)
    phase.cpu_per_job_ms = busy / max(len(phase.latencies), 1) * 1000
    done = await processed_at(url)
    walls = {d: t for d, t in accepted_wall.items() if runs.get(d) in done and runs[d] in workers.wall}
    phase.to_processed = [done[runs[d]] - t for d, t in walls.items()]
    phase.to_dispatch = [workers.wall[runs[d]] - done[runs[d]] for d in walls]


async def idle_window(args: argparse.Namespace, proc: psutil.Process, phase: Phase) -> None:
    """CPU of the orchestrator (children included) over the window, with no webhooks."""
    before = harness.cpu_seconds(proc)
    began = time.perf_counter()
    await anyio.sleep(args.window)  # the measurement window itself
    phase.idle_cpu = (harness.cpu_seconds(proc) - before) / (time.perf_counter() - began)
    phase.rss = total_rss(proc)


async def measure(args: argparse.Namespace, url: str, port: int, pid: int, repo: Path, sha: str) -> None:
    base_url = f"http://127.0.0.1:{port}"
    await harness.wait_http(f"{base_url}/health")
    await register_source(base_url, repo)
    proc = psutil.Process(pid)
    workers = Workers()
    base, full = Phase(args.eligible), Phase(args.agents)
    async with anyio.create_task_group() as tg:
        tg.start_soon(workers.run, port, args.eligible)
        with anyio.fail_after(120):
            await workers.all_connected.wait()
        # Warm up (lock-file read, connections, code paths) until the warm-up jobs reached agents, then measure.
        warm, _, _ = await send_webhooks(base_url, repo, sha, count=20, rate=args.rate)
        warm_runs: dict[str, str] = {}

        async def warm_dispatched() -> bool:
            warm_runs.update(await delivery_runs(url))
            return all(warm_runs.get(d) in workers.dispatched for d in warm)

        await wait_until(warm_dispatched, 60, "warm-up runs dispatched")
        await webhook_phase(args, url, base_url, proc, repo, sha, workers, base)
        await idle_window(args, proc, base)
        print(
            f"N={base.agents}: p99 {harness.pct(base.latencies, 0.99):.1f} ms; connecting "
            f"{args.agents - args.eligible} more agents",
            flush=True,
        )

        connected, stop = anyio.Event(), anyio.Event()
        began = time.perf_counter()
        if args.agents > args.eligible:
            tg.start_soon(idle_agents_elsewhere, port, args.agents - args.eligible, connected, stop)
            with anyio.fail_after(600):
                await connected.wait()
        print(f"{args.agents - args.eligible} agents registered in {time.perf_counter() - began:.1f} s", flush=True)
        # Let the one-time work after a registration burst pass (the heap resettle runs within 5 s of it), so the
        # idle window measures the steady state.
        await anyio.sleep(10)
        await idle_window(args, proc, full)
        await webhook_phase(args, url, base_url, proc, repo, sha, workers, full)
        report(args, base, full)
        stop.set()
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test of the benchmark)")
    parser.add_argument("--agents", type=int, help="connected agents in the second phase (default 10000; --quick 200)")
    parser.add_argument("--eligible", type=int, help="agents that run the bench job (default 100; --quick 10)")
    parser.add_argument("--webhooks", type=int, help="webhooks to send (default 1000; --quick 50)")
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks per second (default 50)")
    parser.add_argument("--window", type=float, help="seconds of idle CPU measurement (default 30; --quick 3)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--orchestrator-log", default=None, help="append the orchestrator's output to this file")
    parser.add_argument(
        "--processing-workers",
        type=int,
        default=None,
        help="KICI_PROCESSING_WORKERS for the orchestrator (default: its own default)",
    )
    parser.add_argument("--idle-agents-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.idle_agents_child is not None:  # the process that holds the idle agents (idle_agents_elsewhere)
        anyio.run(idle_agents_child, args.port, args.idle_agents_child)
        return
    for name, full, quick in (
        ("agents", 10_000, 200),
        ("eligible", 100, 10),
        ("webhooks", 1000, 50),
        ("window", 30.0, 3.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    # Best of three, alternating, so that a burst of load from elsewhere on the machine does not decide it.
    runs = [(core_cost(args.eligible, args.eligible), core_cost(args.agents, args.eligible)) for _ in range(3)]
    small, large = min(r[0] for r in runs), min(r[1] for r in runs)
    print(
        f"dispatcher core, per job: {small:.0f} us with {args.eligible} agents, {large:.0f} us with {args.agents} "
        f"({args.eligible} eligible): {large / small:.2f}x",
        flush=True,
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.agents < args.eligible:
        parser.error("--agents must be at least --eligible")
    want = 2 * args.agents + 1024  # client and server ends of every socket, plus slack
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))  # inherited by the orchestrator
    work = Path(tempfile.mkdtemp(prefix="kici-bench-"))
    pg: EmbeddedPostgres | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        url = args.database_url
        if not url:
            pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="kici-bench-pg-")), durable=True)
            url = pg.start()
        anyio.run(apply_migrations_async, url)
        repo, sha = make_repo(work)
        port = harness.free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KICI_")},
            "KICI_MODE": "independent",
            "KICI_DATABASE_URL": url,
            "KICI_SECRET_KEY": "cd" * 32,
            "KICI_HOST": "127.0.0.1",
            "KICI_PORT": str(port),
            "KICI_DATA_DIR": str(work / "data"),
            "KICI_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warn"),
            "KICI_AGENT_AUTH": "none",
            "KICI_ALLOW_LOCAL_SOURCES": "true",
            "KICI_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        if args.processing_workers is not None:
            env["KICI_PROCESSING_WORKERS"] = str(args.processing_workers)
        out = open(args.orchestrator_log, "ab") if args.orchestrator_log else subprocess.DEVNULL
        proc = subprocess.Popen([str(BIN / "kici-standalone")], env=env, stdout=out, stderr=out)
        anyio.run(measure, args, url, port, proc.pid, repo, sha)
    finally:
        harness.stop([proc] if proc is not None else [], pg, work)


if __name__ == "__main__":
    main()
