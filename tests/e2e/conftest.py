"""Shared pieces of the e2e tests: the session's PostgreSQL fixtures, and ``kici-standalone`` in independent
mode against a local GitHub (:class:`tests.support.github_server.GitHubServer`) with sources registered through
``kici-admin``.

:class:`Independent` bundles one running orchestrator with what a test needs around it: signed GitHub and
generic webhooks, database queries, bounded polling, ``kici-admin`` and ``/metrics``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from tests.support import waits
from tests.support.github_server import GitHubServer, app_key
from tests.support.orchestrator import BIN, AdminResult, OrchestratorProcess, clean_env, kici_admin
from tests.support.pg import PgServer, create_database, db_url, drop_database, pg_server, pg_template

__all__ = ["db_url", "pg_server", "pg_template"]

ORG = "acme"
APP_ID = "424242"
INSTALLATION = 4242
WEBHOOK_SECRET = "e2e-webhook-secret"
GENERIC_SECRET = "e2e-generic-secret"
GENERIC_NAME = "deploys"
SECRET_KEY = "cd" * 32
ADMIN_TOKEN = "kat-admin-e2e-" + "9" * 24
SHA = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"
LOCKFILE_PATH = ".kici/kici.lock.json"
BOUND = 60.0

T = TypeVar("T")


# ------------------------------------------------------------------------------------------ lock files
def job(name: str, *needs: str) -> dict[str, Any]:
    """A static lock-file job running ``true`` on ``linux``, needing ``needs``."""
    return {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "exact", "value": "linux"}],
        "needs": [{"name": n} for n in needs],
        "steps": [{"name": "step", "run": "true"}],
    }


def push_workflow(name: str, branch: dict[str, str], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """A workflow triggered by pushes to branches matching ``branch`` (``{"type", "pattern"}``)."""
    return {"name": name, "triggers": [{"_type": "push", "branches": [branch], "paths": []}], "jobs": jobs}


def lockfile(workflows: list[dict[str, Any]], *, schema: int = 29) -> bytes:
    """A lock-file document with ``workflows``."""
    return json.dumps(
        {
            "schemaVersion": schema,
            "source": {"file": ".kici/workflows/ci.ts"},
            "contentHash": "e2e",
            "workflows": workflows,
        }
    ).encode()


GOOD_LOCKFILE = lockfile(
    [
        push_workflow("build", {"type": "glob", "pattern": "main"}, [job("compile"), job("test", "compile")]),
        push_workflow("release", {"type": "glob", "pattern": "release/*"}, [job("publish")]),
    ]
)
"""Two workflows: a push to ``main`` runs ``build`` (two jobs) and not ``release``."""


# ------------------------------------------------------------------------------------------ webhooks
def push_body(repo: str, *, branch: str = "main", sha: str = SHA, note: str = "") -> bytes:
    """A GitHub ``push`` payload for ``repo``."""
    owner, name = repo.split("/")
    return json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "before": "0" * 40,
            "after": sha,
            "deleted": False,
            "repository": {
                "full_name": repo,
                "name": name,
                "owner": {"login": owner},
                "clone_url": f"https://github.com/{repo}.git",
                "default_branch": "main",
            },
            "head_commit": {"id": sha, "message": note or "change"},
            "commits": [],
            "sender": {"login": "dev"},
            "installation": {"id": INSTALLATION},
        }
    ).encode()


def github_signature(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    """``X-Hub-Signature-256`` of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(
    body: bytes,
    delivery: str,
    *,
    event: str = "push",
    secret: str = WEBHOOK_SECRET,
    signature: str | None = None,
    app_id: str = APP_ID,
) -> dict[str, str]:
    """Headers of a GitHub App delivery (signed with ``secret`` unless ``signature`` is given)."""
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": app_id,
        "X-Hub-Signature-256": signature if signature is not None else github_signature(body, secret),
    }


def generic_headers(body: bytes, delivery: str, *, secret: str = GENERIC_SECRET) -> dict[str, str]:
    """Headers of a generic-source delivery signed with ``hmac_sha256``."""
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Signature-256": sig, "X-Delivery-Id": delivery}


def new_delivery() -> str:
    """A fresh GitHub-style delivery GUID."""
    return str(uuid.uuid4())


# ------------------------------------------------------------------------------------------ the world
@dataclass
class Independent:
    """A running ``kici-standalone`` with its database, GitHub server and registered sources."""

    proc: OrchestratorProcess
    db_url: str
    gh: GitHubServer
    data_dir: Path
    generic_source_id: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.url

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=BOUND) as http:
            return await http.post(path, content=body, headers=headers)

    async def push(self, repo: str, delivery: str | None = None, **kw: Any) -> tuple[str, httpx.Response]:
        """Post a signed ``push`` for ``repo``; returns the delivery id and the response."""
        delivery = delivery or new_delivery()
        body = push_body(repo, **kw)
        return delivery, await self.post(f"/webhook/{ORG}/github", body, github_headers(body, delivery))

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            cur = await conn.execute(sql, args)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement that returns no rows; the affected row count."""
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            cur = await conn.execute(sql, args)  # type: ignore[arg-type]
            return cur.rowcount

    async def event(self, delivery: str) -> dict[str, Any] | None:
        """The event_log row of ``delivery`` with its inbox state (None when absent)."""
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
            cur = await conn.execute(
                "SELECT e.status, e.matched_count, e.error_message, e.run_id, e.repo_identifier, e.ref, "
                "i.state AS inbox_state, i.attempts, i.last_error, i.available_at > now() AS waiting "
                "FROM event_log e LEFT JOIN delivery_inbox i ON i.event_log_id = e.id "
                "WHERE e.delivery_id = %s",
                (delivery,),
            )
            row = await cur.fetchone()
        return dict(row) if row is not None else None  # type: ignore[call-overload]

    async def wait_event(
        self, delivery: str, done: Callable[[dict[str, Any]], bool], bound: float = BOUND
    ) -> dict[str, Any]:
        """Poll the event_log row of ``delivery`` until ``done(row)`` (bounded)."""

        async def probe() -> dict[str, Any] | None:
            row = await self.event(delivery)
            self.notes["last"] = row
            return row if row is not None and done(row) else None

        return await poll(
            probe,
            bound,
            lambda: f"delivery {delivery}: {self.notes.get('last')}\n{self.proc.tail()}",
            what=f"delivery {delivery} to reach the awaited state",
        )

    async def wait_status(self, delivery: str, *statuses: str, bound: float = BOUND) -> dict[str, Any]:
        """Poll until the delivery's event_log status is one of ``statuses`` and its inbox row is finished."""
        return await self.wait_event(
            delivery, lambda r: r["status"] in statuses and r["inbox_state"] != "pending", bound
        )

    async def runs(self, delivery: str) -> list[tuple[str, str]]:
        """``(workflow_name, run_id)`` of the delivery's runs."""
        rows = await self.query(
            "SELECT workflow_name, run_id::text FROM execution_runs WHERE delivery_id = %s ORDER BY workflow_name",
            delivery,
        )
        return [(str(a), str(b)) for a, b in rows]

    async def admin(self, *args: str, check: bool = True) -> AdminResult:
        return await kici_admin(self.url, ADMIN_TOKEN, *args, check=check)

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}``, plus ``# TYPE`` names under ``"#TYPE <name>"``."""
        async with httpx.AsyncClient(timeout=BOUND) as http:
            text = (await http.get(f"{self.url}/metrics")).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                out["#TYPE " + line.split()[2]] = 1.0
            elif line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


async def poll(
    probe: Callable[[], Awaitable[T | None]],
    bound: float = BOUND,
    describe: Callable[[], str] | None = None,
    *,
    what: str | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None, within ``bound`` seconds.

    On timeout the error names ``what`` was awaited (default: the probe's name) and what ``describe()`` shows
    (default: that the probe still answered None)."""

    async def check() -> tuple[T] | None:
        found = await probe()
        return None if found is None else (found,)

    name = getattr(probe, "__name__", "<lambda>")
    awaited = what or ("a condition" if name == "<lambda>" else name.replace("_", " "))
    found = await waits.until(check, what=awaited, bound=bound, seen=describe or (lambda: f"{awaited}: still None"))
    return found[0]


def standalone_env(db: str, gh: GitHubServer, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of ``kici-standalone`` in independent mode against ``db`` and ``gh``."""
    return clean_env(
        KICI_MODE="independent",
        KICI_DATABASE_URL=db,
        KICI_SECRET_KEY=SECRET_KEY,
        KICI_BOOTSTRAP_ADMIN_TOKEN=ADMIN_TOKEN,
        GITHUB_API_URL=gh.url,
        KICI_DATA_DIR=str(data_dir),
        KICI_LOG_LEVEL="info",
        **extra,
    )


def github_world() -> GitHubServer:
    """A started GitHubServer with the test App installed on every ``acme/*`` repo the tests use."""
    server = GitHubServer().start()
    server.add_app(APP_ID, app_key().public_pem, slug="kici-e2e", name="KiCI e2e", owner=ORG)
    return server


def install(gh: GitHubServer, *repos: str, content: bytes = GOOD_LOCKFILE) -> None:
    """Install the App on ``repos`` (keeping earlier ones) and serve ``content`` as their lock file at SHA."""
    with gh._lock:  # the server keeps one installation per id; extend its repositories
        known = set(gh._installations[INSTALLATION].repos) if INSTALLATION in gh._installations else set()
    gh.add_installation(INSTALLATION, app_id=APP_ID, repos=known | set(repos))
    for repo in repos:
        gh.put_file(repo, SHA, LOCKFILE_PATH, content)
        gh.put_file(repo, "main", LOCKFILE_PATH, content)


def _admin_sync(url: str, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "kici-admin"), "--url", url, *args],
        env=clean_env(KICI_ADMIN_TOKEN=ADMIN_TOKEN),
        capture_output=True,
        check=False,
        timeout=BOUND,
    )
    assert result.returncode == 0, f"kici-admin {args} failed: {result.stdout!r} {result.stderr!r}"
    return result.stdout.decode()


def register_sources(world: Independent) -> None:
    """Register the GitHub App and a generic ``hmac_sha256`` source through ``kici-admin``."""
    key_file = world.data_dir / "app-key.pem"
    key_file.write_text(app_key().private_pem)
    secret_file = world.data_dir / "webhook-secret"
    secret_file.write_text(WEBHOOK_SECRET)
    out = _admin_sync(
        world.url,
        "source",
        "add",
        "github",
        "--name",
        "acme-app",
        "--app-id",
        APP_ID,
        "--private-key",
        f"@{key_file}",
        "--webhook-secret",
        f"@{secret_file}",
        "--customer-id",
        ORG,
    )
    assert f"Source added: github:{APP_ID}" in out, out
    out = _admin_sync(
        world.url,
        "source",
        "add",
        "generic",
        "--org",
        ORG,
        "--name",
        GENERIC_NAME,
        "--secret",
        GENERIC_SECRET,
        "--event-type-header",
        "x-event-type",
        "--json",
    )
    world.generic_source_id = json.loads(out)["source"]["id"]


def boot(db: str, gh: GitHubServer, data_dir: Path, *, register: bool = True, **extra: str) -> Independent:
    """Start ``kici-standalone`` and (optionally) register the sources; the caller stops it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = OrchestratorProcess("kici-standalone", standalone_env(db, gh, data_dir, **extra)).start()
    world = Independent(proc=proc, db_url=db, gh=gh, data_dir=data_dir)
    try:
        if register:
            register_sources(world)
    except BaseException:
        proc.kill()
        raise
    return world


def shutdown(world: Independent) -> None:
    """Stop the orchestrator cleanly when it still runs and check it exited cleanly."""
    if world.proc.running:
        code = world.proc.stop()
        assert code in (0, -15), f"unclean exit {code}:\n{world.proc.tail()}"
    assert not world.gh.errors, world.gh.errors


@pytest.fixture(scope="module")
def module_db_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """A fresh migrated database shared by one test module."""
    name = f"m_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server, name, template=pg_template)
    try:
        yield url
    finally:
        drop_database(pg_server, name)


@pytest.fixture(scope="module")
def independent(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Independent]:
    """One ``kici-standalone`` (independent mode) per test module, sources registered through kici-admin."""
    gh = github_world()
    try:
        world = boot(module_db_url, gh, tmp_path_factory.mktemp("standalone"), KICI_HTTP_MAX_BODY_BYTES=str(256 * 1024))
        try:
            yield world
        finally:
            shutdown(world)
    finally:
        gh.close()
