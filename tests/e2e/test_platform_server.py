"""``kici-server`` as a real process against ``kici-relay`` (in-process uvicorn), GitHub (local server) and an
embedded PostgreSQL: boot refusal, a relayed push end to end, buffered messages across a relay outage and an
orchestrator restart, and hybrid-mode dedup of one delivery arriving both ways at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from anyio.abc import Process

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.secrets import PgSecretStore
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.relay.store import RelayStore
from kici_core.source_records import GitHubSource
from kici_runtime.relay.app import create_app
from kici_runtime.relay.hub import RelayHub, RelaySettings
from kici_runtime.relay.server import RelayServer, bind_socket, uvicorn_config
from tests.support import waits
from tests.support.github_server import GitHubServer, app_key
from tests.support.pg import db_url, pg_server, pg_template

__all__ = ["db_url", "pg_server", "pg_template"]

pytestmark = pytest.mark.anyio

ORG = "acme"
APP_ID = "123456"
REPO = "acme/api"
SHA = "9f2c1e7a4b3d5c6e8f0a1b2c3d4e5f6a7b8c9d0e"
WEBHOOK_SECRET = "whsec-demo"
SECRET_KEY = "ab" * 32
BOUND = 60.0
LOCKFILE = (Path(__file__).parent.parent / "fixtures" / "lockfiles" / "example_a_ci.json").read_bytes()
SERVER = str(Path(sys.executable).parent / "kici-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def push_body(delivery: str) -> bytes:
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": SHA,
            "deleted": False,
            "repository": {
                "full_name": REPO,
                "name": "api",
                "owner": {"login": ORG},
                "clone_url": f"https://github.com/{REPO}.git",
                "default_branch": "main",
            },
            "head_commit": {"id": SHA, "message": f"change {delivery}"},
            "commits": [],
            "sender": {"login": "dev"},
        }
    ).encode()


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": APP_ID,
        "X-Hub-Signature-256": sig,
    }


# --------------------------------------------------------------------------------------------- processes
@dataclass
class Orchestrator:
    env: dict[str, str]
    port: int
    proc: Process | None = None
    lines: list[str] = field(default_factory=list)
    started: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pump(self, proc: Process) -> None:
        assert proc.stdout is not None
        buffer = b""
        async for data in proc.stdout:
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if "started on port" in line:
                    self.started.set()
                changed, self.changed = self.changed, anyio.Event()
                changed.set()
        self.started.set()  # the process exited: stop waiting for it to start

    async def wait_log(self, text: str, count: int) -> None:
        """Wait until ``count`` log lines of the process contain ``text``."""
        with waits.within(
            BOUND, f"{count} kici-server log line(s) containing {text!r}", lambda: "\n".join(self.lines[-30:])
        ):
            while sum(text in line for line in self.lines) < count:
                await self.changed.wait()


@asynccontextmanager
async def orchestrator(env: dict[str, str]) -> AsyncIterator[Orchestrator]:
    """Run ``kici-server`` with ``env`` until the block ends (SIGTERM, then wait for a clean exit)."""
    port = int(env["KICI_PORT"])
    orch = Orchestrator(env=env, port=port)
    async with await anyio.open_process([SERVER], env=env, stderr=None) as proc:
        orch.proc = proc
        async with anyio.create_task_group() as tg:
            tg.start_soon(orch._pump, proc)
            with waits.within(BOUND, "kici-server to log 'started on port'", lambda: "\n".join(orch.lines[-30:])):
                await orch.started.wait()
            if not any("started on port" in line for line in orch.lines):
                with waits.within(BOUND, "kici-server to exit after it failed to start"):
                    await proc.wait()
                raise AssertionError("kici-server did not start:\n" + "\n".join(orch.lines[-30:]))
            try:
                yield orch
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                with waits.within(BOUND, "kici-server to exit after SIGTERM", lambda: "\n".join(orch.lines[-30:])):
                    code = await proc.wait()
                assert code in (0, -signal.SIGTERM), "\n".join(orch.lines[-30:])


@dataclass
class Relay:
    base_url: str
    ws_url: str
    hub: RelayHub

    async def messages(self, *types: str, since: int = 0, wait: float = 0) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=BOUND) as http:
            r = await http.get(
                f"{self.base_url}/api/messages",
                params={"type": ",".join(types), "since": since, "wait": wait, "limit": 10_000},
            )
        return list(r.json()["messages"])

    async def wait_messages(self, *types: str, count: int, bound: float = BOUND) -> list[dict[str, Any]]:
        """Long-poll the relay until ``count`` messages of ``types`` were recorded."""
        found: list[dict[str, Any]] = []
        with waits.within(
            bound,
            f"{count} {'/'.join(types)} message(s) recorded by the relay",
            lambda: f"{len(found)} recorded, the last {found[-3:]}",
        ):
            while True:
                found = await self.messages(*types)
                if len(found) >= count:
                    return found
                await self.messages(*types, since=found[-1]["seq"] if found else 0, wait=5)


@asynccontextmanager
async def relay(db_path: Path, port: int) -> AsyncIterator[Relay]:
    """The reference relay on a fixed loopback port (so it can be stopped and started again)."""
    store = RelayStore(str(db_path))
    app = create_app(store, RelaySettings())
    sock = bind_socket("127.0.0.1", port)
    server = RelayServer(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with waits.within(10, f"the relay to start serving on port {port}"):
                await server.ready.wait()
            try:
                yield Relay(base_url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}/ws", hub=app.state.hub)
            finally:
                server.should_exit = True
    finally:
        sock.close()
        store.close()


@dataclass
class World:
    db_url: str
    gh: GitHubServer
    relay_db: Path
    relay_port: int
    token: str
    data_dir: Path

    def env(self, mode: str = "platform", **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KICI_") and k != "GITHUB_API_URL"}
        return {
            **base,
            "KICI_MODE": mode,
            "KICI_PLATFORM_URL": f"ws://127.0.0.1:{self.relay_port}/ws",
            "KICI_PLATFORM_TOKEN": self.token,
            "KICI_DATABASE_URL": self.db_url,
            "KICI_SECRET_KEY": SECRET_KEY,
            "KICI_HOST": "127.0.0.1",
            "KICI_PORT": str(free_port()),
            "GITHUB_API_URL": self.gh.url,
            "KICI_DATA_DIR": str(self.data_dir),
            "KICI_LOG_LEVEL": "info",
            **extra,
        }

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.db_url) as conn:
            cur = await conn.execute(sql, args)  # type: ignore[arg-type]
            return await cur.fetchall()


@pytest.fixture
def gh() -> Iterator[GitHubServer]:
    key = app_key()
    with GitHubServer() as server:
        server.add_app(APP_ID, key.public_pem)
        server.add_installation(77, app_id=APP_ID, repos=[REPO])
        server.put_file(REPO, SHA, ".kici/kici.lock.json", LOCKFILE)
        server.put_file(REPO, "main", ".kici/kici.lock.json", LOCKFILE)
        yield server


@pytest.fixture
async def world(db_url: str, gh: GitHubServer, tmp_path: Path) -> World:
    db = Database(db_url, max_size=2)
    await db.open()
    try:
        source_id = str(uuid.uuid4())
        await PgSourceStore(db).add_github(
            GitHubSource(id=source_id, routing_key=f"github:{APP_ID}", name="acme-app", app_id=APP_ID)
        )
        store = PgSecretStore(db, bytes.fromhex(SECRET_KEY))
        await store.put("__system__", f"__source__/{source_id}", "webhookSecret", WEBHOOK_SECRET)
        await store.put("__system__", f"__source__/{source_id}", "privateKey", app_key().private_pem)
    finally:
        await db.close()
    relay_db = tmp_path / "relay.sqlite3"
    rs = RelayStore(str(relay_db))
    rs.add_github_source(org=ORG, app_id=APP_ID, webhook_secret=WEBHOOK_SECRET)
    _, token = rs.create_key(org=ORG, name="orchestrator")
    rs.close()
    return World(
        db_url=db_url, gh=gh, relay_db=relay_db, relay_port=free_port(), token=token, data_dir=tmp_path / "data"
    )


# --------------------------------------------------------------------------------------------- tests
async def _run(env: dict[str, str]) -> tuple[int, str]:
    result = await anyio.run_process([SERVER], env=env, check=False)
    return result.returncode, (result.stdout + result.stderr).decode()


async def test_boot_refusal() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    base["KICI_DATABASE_URL"] = "postgresql://kici@127.0.0.1:1/kici"
    code, out = await _run({**base, "KICI_MODE": "platform"})
    assert code == 1
    assert "KICI_PLATFORM_URL is required when KICI_MODE is platform or hybrid" in out
    assert "KICI_PLATFORM_TOKEN is required when KICI_MODE is platform or hybrid" in out
    code, out = await _run({**base, "KICI_MODE": "hybrid", "KICI_PLATFORM_URL": "ws://127.0.0.1:1/ws"})
    assert code == 1 and "KICI_PLATFORM_TOKEN is required" in out and "KICI_PLATFORM_URL is required" not in out
    code, out = await _run({**base, "KICI_MODE": "independent"})
    assert code == 1 and "kici-standalone" in out
    code, out = await _run({**base})  # the mode defaults to platform: still needs URL and token
    assert code == 1 and "KICI_PLATFORM_URL is required" in out


async def test_relayed_push_is_accepted_processed_and_traced(world: World) -> None:
    async with relay(world.relay_db, world.relay_port) as rl, orchestrator(world.env()) as orch:
        regs = await rl.wait_messages("source.register", count=1)
        assert [s["routingKey"] for s in regs[0]["message"]["sources"]] == [f"github:{APP_ID}"]
        assert regs[0]["message"]["mode"] == "platform"
        body = push_body("relay-1")
        async with httpx.AsyncClient(timeout=BOUND) as http:
            resp = await http.post(
                f"{rl.base_url}/webhook/{ORG}/github", content=body, headers=github_headers(body, "relay-1")
            )
            assert resp.status_code == 200, resp.text
            # platform mode: the direct route is closed
            direct = await http.post(
                f"{orch.url}/webhook/{ORG}/github", content=body, headers=github_headers(body, "relay-1")
            )
            assert direct.status_code == 403
            metrics_text = (await http.get(f"{orch.url}/metrics")).text
        assert "kici_platform_connection_status 1.0" in metrics_text
        events = await rl.wait_messages("execution.event", count=1)
        event = events[0]["message"]
        assert not events[0]["problems"], events[0]["problems"]
        assert event["event"] == "started" and event["data"]["deliveryId"] == "relay-1"
        assert event["data"]["matchedWorkflows"] == 1 and event["data"]["repoIdentifier"] == REPO
        rows = await world.query(
            "SELECT source, status, matched_count FROM event_log WHERE delivery_id = %s", "relay-1"
        )
        assert rows == [("relay", "processed", 1)]
        runs = await world.query("SELECT count(*) FROM execution_runs WHERE delivery_id = %s", "relay-1")
        assert runs == [(1,)]
        acks = await rl.messages("webhook.ack")
        assert [a["message"]["result"] for a in acks] == ["accepted"]


def pr_body(delivery: str, head: str) -> bytes:
    """A ``pull_request`` ``opened`` from ``feature/retry`` into ``main`` (not a fork)."""
    side = {"repo": {"full_name": REPO}}
    return json.dumps(
        {
            "action": "opened",
            "number": 12,
            "pull_request": {
                "number": 12,
                "title": f"Retry {delivery}",
                "head": {"ref": "feature/retry", "sha": head, **side},
                "base": {"ref": "main", "sha": SHA, **side},
            },
            "repository": {
                "full_name": REPO,
                "name": "api",
                "owner": {"login": ORG},
                "clone_url": f"https://github.com/{REPO}.git",
                "default_branch": "main",
            },
            "sender": {"login": "contributor", "id": 31337},
        }
    ).encode()


async def test_a_new_run_is_forwarded_as_pending_with_its_commit(world: World, gh: GitHubServer) -> None:
    """No agent is connected, so the runs wait: the Platform still hears of them (``execution.status``
    ``pending``, before the decision trace), and a pull request's run names its head commit."""
    head = "4d" * 20
    gh.set_pull_files(REPO, 12, ["src/retry.ts"])
    async with relay(world.relay_db, world.relay_port) as rl, orchestrator(world.env()):
        await rl.wait_messages("source.register", count=1)
        async with httpx.AsyncClient(timeout=BOUND) as http:
            for delivery, event, body in (
                ("pending-push", "push", push_body("pending-push")),
                ("pending-pr", "pull_request", pr_body("pending-pr", head)),
            ):
                headers = {**github_headers(body, delivery), "X-GitHub-Event": event}
                resp = await http.post(f"{rl.base_url}/webhook/{ORG}/github", content=body, headers=headers)
                assert resp.status_code == 200, resp.text
        statuses = await rl.wait_messages("execution.status", count=2)
        events = await rl.wait_messages("execution.event", count=2)
    runs = dict(await world.query("SELECT delivery_id, run_id::text FROM execution_runs"))
    assert set(runs) == {"pending-push", "pending-pr"}
    by_run = {s["message"]["runId"]: s for s in statuses}
    assert set(by_run) == set(runs.values())
    for delivery, event, sha, ref in (
        ("pending-push", "push", SHA, "main"),
        ("pending-pr", "pull_request", head, "feature/retry"),
    ):
        recorded = by_run[runs[delivery]]
        assert not recorded["problems"], recorded["problems"]
        message = recorded["message"]
        assert message["status"] == "pending" and (message["sha"], message["ref"]) == (sha, ref)
        assert message["workflowName"] == "ci" and message["repoIdentifier"] == REPO
        assert message["repoProvider"] == "github" and message["jobCount"] == 2
        assert message["triggerEvent"] == event
        assert isinstance(message["startedAt"], int) and isinstance(message["timestamp"], int)
        trace = next(e for e in events if e["message"]["data"]["deliveryId"] == delivery)
        assert recorded["seq"] < trace["seq"]  # the run is announced before the decision trace
        assert trace["message"]["data"]["ref"] == sha
    (waiting,) = await world.query("SELECT count(*) FROM execution_runs WHERE status = 'pending'")
    assert waiting == (2,)


async def test_buffered_messages_survive_a_relay_outage_and_an_orchestrator_restart(world: World) -> None:
    env = world.env("hybrid")
    async with relay(world.relay_db, world.relay_port) as rl, orchestrator(env):
        await rl.wait_messages("source.register", count=1)
    # the relay is gone; the orchestrator keeps accepting direct webhooks (hybrid) and buffers what the
    # Platform must hear in platform_outbox
    async with orchestrator(env) as orch:
        async with httpx.AsyncClient(timeout=BOUND) as http:
            for i in range(3):
                body = push_body(f"outage-{i}")
                r = await http.post(
                    f"{orch.url}/webhook/{ORG}/github", content=body, headers=github_headers(body, f"outage-{i}")
                )
                assert r.status_code == 202, r.text
        await orch.wait_log("Webhook processed", 3)
        processed = await world.query("SELECT count(*) FROM event_log WHERE status = 'processed'")
        assert processed == [(3,)]
    # deliveries are processed concurrently, so the outbox (not the posting order) fixes the order to keep
    buffered = await world.query(
        "SELECT payload->>'delivery_id' FROM platform_outbox WHERE kind = 'delivery_decided' ORDER BY seq"
    )
    assert sorted(row[0] for row in buffered) == [f"outage-{i}" for i in range(3)]
    # the orchestrator restarts first, then the relay comes back: everything buffered arrives, in order
    async with orchestrator(env), relay(world.relay_db, world.relay_port) as rl:
        events = await rl.wait_messages("execution.event", count=3)
        assert [e["message"]["data"]["deliveryId"] for e in events] == [row[0] for row in buffered]
        regs = await rl.messages("source.register")
        assert regs[0]["seq"] < events[0]["seq"]
    assert (await world.query("SELECT count(*) FROM platform_outbox"))[0][0] == 0


async def test_hybrid_same_delivery_both_ways_runs_once(world: World) -> None:
    rounds = 50
    async with relay(world.relay_db, world.relay_port) as rl, orchestrator(world.env("hybrid")) as orch:
        await rl.wait_messages("source.register", count=1)
        async with httpx.AsyncClient(timeout=BOUND) as http:
            before = _dedup_hits((await http.get(f"{orch.url}/metrics")).text)
            for i in range(rounds):
                delivery = f"both-{i}-{secrets.token_hex(4)}"
                body = push_body(delivery)
                results = await _post_both(
                    http, body, delivery, f"{rl.base_url}/webhook/{ORG}/github", f"{orch.url}/webhook/{ORG}/github"
                )
                assert results["relay"].status_code == 200, results["relay"].text
                assert results["direct"].status_code in (200, 202), results["direct"].text
                direct_dup = results["direct"].json().get("duplicate") is True
                rows = await world.query("SELECT source FROM event_log WHERE delivery_id = %s", delivery)
                assert len(rows) == 1
                assert rows[0][0] == ("relay" if direct_dup else "direct")
            after = _dedup_hits((await http.get(f"{orch.url}/metrics")).text)
        assert after - before == rounds
        acks = await rl.messages("webhook.ack")
        assert len(acks) == rounds and all(a["message"]["result"] == "accepted" for a in acks)
        await orch.wait_log("Webhook processed", rounds)
        per_delivery = await world.query(
            "SELECT delivery_id, count(*) FROM execution_runs WHERE delivery_id LIKE 'both-%%' GROUP BY 1"
        )
        assert len(per_delivery) == rounds and all(n == 1 for _, n in per_delivery)


async def _post_both(
    http: httpx.AsyncClient, body: bytes, delivery: str, relay_url: str, direct_url: str
) -> dict[str, httpx.Response]:
    """POST the same signed delivery to both URLs at the same instant."""
    results: dict[str, httpx.Response] = {}
    go = anyio.Event()

    async def post(name: str, url: str) -> None:
        await go.wait()
        results[name] = await http.post(url, content=body, headers=github_headers(body, delivery))

    async with anyio.create_task_group() as tg:
        tg.start_soon(post, "relay", relay_url)
        tg.start_soon(post, "direct", direct_url)
        go.set()
    return results


def _dedup_hits(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("kici_dedup_hits_total "):
            return float(line.split()[1])
    return 0.0
