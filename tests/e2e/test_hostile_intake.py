"""Hostile senders and clients against a real ``kici-standalone``: URL ids that could escape object keys, unsigned
floods that used to eat a source's rate limit, NUL bytes, deeply nested JSON, NaN in stored payloads, a null
role, a revoked bootstrap token, ``local`` sources outside development, world-readable payload files, and slow
clients. Each answer is a clear 4xx (or a safe rendering), the server stays up, and ordinary deliveries around
the hostile ones are all processed.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from tests.e2e.conftest import (
    ADMIN_TOKEN,
    BOUND,
    GENERIC_NAME,
    GENERIC_SECRET,
    ORG,
    Independent,
    boot,
    generic_headers,
    github_headers,
    github_world,
    install,
    new_delivery,
    poll,
    push_body,
    shutdown,
)
from tests.support.github_server import GitHubServer
from tests.support.orchestrator import kici_admin
from tests.support.pg import PgServer, create_database, drop_database

pytestmark = pytest.mark.anyio

SLOW = {"KICI_HTTP_HEADER_TIMEOUT_MS": "1000", "KICI_HTTP_BODY_TIMEOUT_MS": "1500"}


@pytest.fixture(scope="module")
def gh() -> Iterator[GitHubServer]:
    server = github_world()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_db(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """A migrated database of its own (for tests that change tokens or seed rows before boot)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server, name, template=pg_template)
    try:
        yield url
    finally:
        drop_database(pg_server, name)


@pytest.fixture(scope="module")
def world(module_db_url: str, gh: GitHubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Independent]:
    """One orchestrator for the module: 256 KiB body limit, short header/body timeouts, 5 unverified
    requests per minute per address."""
    w = boot(
        module_db_url,
        gh,
        tmp_path_factory.mktemp("hostile"),
        KICI_HTTP_MAX_BODY_BYTES=str(256 * 1024),
        KICI_WEBHOOK_UNVERIFIED_RPM="5",
        **SLOW,
    )
    install(gh, "acme/app")
    try:
        yield w
    finally:
        shutdown(w)


async def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` bytes as they are (no URL normalisation) and return everything the server answers until
    it closes the connection (the requests say ``Connection: close``; the socket is not half-closed, which would
    make the server drop a request still being handled)."""

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    return await anyio.to_thread.run_sync(run)


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


async def signed_push_processed(w: Independent) -> str:
    """An ordinary signed push that must be processed (nothing lost around hostile requests)."""
    delivery, resp = await w.push("acme/app")
    assert resp.status_code == 202, resp.text
    await w.wait_status(delivery, "processed")
    return delivery


async def admin_http(w: Independent, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=w.url, timeout=BOUND, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as http:
        return await http.request(method, path, **kw)


# ------------------------------------------------------------------------------------------ ids and keys
async def test_dot_dot_org_ids_are_refused_at_the_route(world: Independent) -> None:
    """``POST /webhook/%2e%2e/github`` (signed) used to be accepted with a payload key the object store refuses
    forever; now the URL ids are checked first."""
    w = world
    body = push_body("acme/app")
    for org in ("%2e%2e", "..", ".", "a%2fb", "%00", "x" * 17, "caf%C3%A9"):
        delivery = new_delivery()
        answer = await raw(
            w.proc.port, request_bytes("POST", f"/webhook/{org}/github", github_headers(body, delivery), body)
        )
        assert 400 <= status_of(answer) < 500, (org, answer[:300])
        rows = await w.query("SELECT 1 FROM event_log WHERE delivery_id = %s", delivery)
        assert rows == [], org
    answer = await raw(
        w.proc.port, request_bytes("POST", "/webhook/%2e%2e/github", github_headers(body, "d-dots"), body)
    )
    assert status_of(answer) == 400
    assert body_of(answer) == {
        "rejected": True,
        "reason": "Invalid URL: org id may contain only letters, digits and _ . : - (not starting with .)",
    }
    generic = b'{"a":1}'
    answer = await raw(
        w.proc.port,
        request_bytes("POST", f"/webhook/{ORG}/generic/%2e%2e", generic_headers(generic, "g-dots"), generic),
    )
    assert status_of(answer) == 400 and "source id" in body_of(answer)["reason"]
    # a delivery id over 512 characters is refused before anything is stored
    answer = await raw(
        w.proc.port, request_bytes("POST", f"/webhook/{ORG}/github", github_headers(body, "d" * 513), body)
    )
    assert status_of(answer) == 400
    assert body_of(answer) == {"rejected": True, "reason": "delivery id is longer than 512 characters"}
    await signed_push_processed(w)


async def test_a_payload_that_cannot_be_offloaded_never_holds_back_the_others(
    fresh_db: str, gh: GitHubServer, tmp_path: Path
) -> None:
    """A stored delivery whose payload key the object store refuses (written before ids were checked) is skipped
    once, counted and logged; its body stays readable, and every delivery behind it is offloaded."""
    poisoned = new_delivery()
    body = b'{"ref":"refs/heads/main","poisoned":true}'
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        await conn.execute(
            "WITH e AS (INSERT INTO event_log (org_id, delivery_id, routing_key, event, source, provider,"
            " payload_key, payload_size_bytes, payload_hash, status, received_at)"
            " VALUES ('..', %s, 'github:424242', 'push', 'direct', 'github', %s, %s, %s, 'failed',"
            " now() - interval '1 hour') RETURNING id)"
            " INSERT INTO delivery_payloads (event_log_id, body, created_at)"
            " SELECT id, %s, now() - interval '1 hour' FROM e",
            (
                poisoned,
                f"event-log/../{poisoned}.json.gz",
                len(body),
                hashlib.sha256(body).hexdigest(),
                gzip.compress(body),
            ),
        )
    w = boot(fresh_db, gh, tmp_path / "world")
    try:
        install(gh, "acme/app")
        ordinary = [await signed_push_processed(w) for _ in range(3)]

        async def offloaded() -> bool | None:
            rows = await w.query(
                "SELECT e.delivery_id FROM delivery_payloads p JOIN event_log e ON e.id = p.event_log_id"
            )
            return True if [r[0] for r in rows] == [poisoned] else None

        await poll(offloaded, BOUND, lambda: w.proc.tail())
        metrics = await w.metrics()
        assert metrics.get("kici_payload_offload_skipped_total") == 1.0, w.proc.tail()
        assert metrics.get("kici_payload_offload_failures_total", 0.0) == 0.0
        assert w.proc.log_count("payload cannot be offloaded; skipped") == 1
        for delivery in ordinary:  # their objects exist under safe keys
            keys = await w.query("SELECT payload_key FROM event_log WHERE delivery_id = %s", delivery)
            assert keys[0][0] == f"event-log/{ORG}/{delivery}.json.gz"
        shown = await admin_http(
            w, "GET", f"/api/v1/admin/event-log/{poisoned}", params={"orgId": "..", "includePayload": "true"}
        )
        assert shown.status_code == 200 and shown.json()["payload"] == json.loads(body), shown.text
    finally:
        shutdown(w)


# ------------------------------------------------------------------------------------------ rate limits
async def test_unsigned_floods_do_not_use_up_a_sources_limit(
    module_db_url: str, gh: GitHubServer, tmp_path: Path
) -> None:
    """Only verified deliveries count against a source's limit; unverified requests are limited per address."""
    w = boot(module_db_url, gh, tmp_path / "rl", KICI_WEBHOOK_UNVERIFIED_RPM="10", register=False)
    try:
        out = await w.admin(
            "source",
            "add",
            "generic",
            "--org",
            ORG,
            "--name",
            "limited",
            "--secret",
            GENERIC_SECRET,
            "--rate-limit",
            "3",
            "--json",
        )
        assert json.loads(out.stdout)["source"]["rateLimitRpm"] == 3
        body = b'{"event":"build"}'
        answers = []
        for _ in range(15):  # unsigned: 401 until the per-address limit, then 429
            resp = await w.post(f"/webhook/{ORG}/generic/limited", body, {"X-Delivery-Id": new_delivery()})
            answers.append(resp.status_code)
        assert answers == [401] * 10 + [429] * 5, answers
        assert resp.json() == {"rejected": True, "reason": "Too many unverified requests from this address"}
        assert resp.headers["retry-after"].isdigit()
        signed = [
            await w.post(f"/webhook/{ORG}/generic/limited", body, generic_headers(body, new_delivery()))
            for _ in range(4)
        ]
        assert [r.status_code for r in signed] == [202, 202, 202, 429], [r.text for r in signed]
        assert signed[-1].json() == {"rejected": True, "reason": "Rate limit exceeded"}
    finally:
        shutdown(w)


# ------------------------------------------------------------------------------------------ 500s that became 4xx
async def test_nul_bytes_deep_json_nan_payloads_and_null_roles_answer_4xx(world: Independent) -> None:
    w = world
    port = w.proc.port
    # NUL bytes in path parameters and query strings, on webhook and admin routes
    for path in (
        f"/webhook/{ORG}/generic/a%00b",
        "/webhook/a%00b/github",
        "/api/v1/admin/event-log/x%00y?orgId=acme",
        "/api/v1/admin/event-log?orgId=ac%00me",
        "/api/v1/admin/generic-sources/%00",
    ):
        method = "POST" if path.startswith("/webhook") else "GET"
        answer = await raw(port, request_bytes(method, path, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, b"{}"))
        assert status_of(answer) == 400, (path, answer[:300])
        assert body_of(answer) == {"error": "Invalid request: the URL contains a NUL byte"}

    # a 10,000-deep JSON body on both webhook routes (signed, so it reaches the parser)
    deep = b"[" * 10_000 + b"]" * 10_000
    resp = await w.post(f"/webhook/{ORG}/github", deep, github_headers(deep, new_delivery()))
    assert resp.status_code == 400 and resp.json() == {
        "rejected": True,
        "reason": "Invalid payload: JSON nested deeper than 128 levels",
    }
    deep_object = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    resp = await w.post(
        f"/webhook/{ORG}/generic/{GENERIC_NAME}",
        deep_object,
        {**generic_headers(deep_object, new_delivery()), "x-event-type": "build"},
    )
    assert resp.status_code == 400 and "nested deeper" in resp.json()["reason"]
    # ... and on the admin API
    resp = await admin_http(
        w, "POST", "/api/v1/admin/tokens", content=deep, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "nested deeper" in resp.text

    # NaN sent by a sender is refused; one already stored is shown as standard JSON
    nan_body = b'{"ref":"refs/heads/main","score":NaN,"x":-Infinity}'
    resp = await w.post(f"/webhook/{ORG}/github", nan_body, github_headers(nan_body, new_delivery()))
    assert resp.status_code == 400
    stored = new_delivery()
    await w.execute(
        "WITH e AS (INSERT INTO event_log (org_id, delivery_id, routing_key, event, source, provider, payload_key,"
        " payload_size_bytes, payload_hash, status) VALUES (%s, %s, 'github:424242', 'push', 'direct', 'github',"
        " %s, %s, 'h', 'failed') RETURNING id) INSERT INTO delivery_payloads (event_log_id, body)"
        " SELECT id, %s FROM e",
        ORG,
        stored,
        f"event-log/{ORG}/{stored}.json.gz",
        len(nan_body),
        gzip.compress(nan_body),
    )
    resp = await admin_http(
        w, "GET", f"/api/v1/admin/event-log/{stored}", params={"orgId": ORG, "includePayload": "true"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["payload"] == {"ref": "refs/heads/main", "score": "NaN", "x": "-Infinity"}
    shown = await w.admin("event-log", "show", stored, "--org", ORG, "--payload")
    assert '"score": "NaN"' in shown.stdout

    # role: null (and other non-strings) on token creation
    for role in (None, 7, ["owner"]):
        resp = await admin_http(w, "POST", "/api/v1/admin/tokens", json={"label": "ci", "role": role})
        assert resp.status_code == 400, (role, resp.text)
        assert resp.json()["error"] == "Validation error"
        assert resp.json()["details"][0]["path"] == ["role"]
    resp = await admin_http(w, "POST", "/api/v1/admin/tokens", json={"label": "bad\u0000label", "role": "auditor"})
    assert resp.status_code == 400 and "NUL" in resp.text
    assert w.proc.running
    await signed_push_processed(w)


# ------------------------------------------------------------------------------------------ bootstrap token
async def test_a_revoked_bootstrap_token_stays_revoked_across_restarts(
    fresh_db: str, gh: GitHubServer, tmp_path: Path
) -> None:
    w = boot(fresh_db, gh, tmp_path / "boot", register=False)
    try:
        created = await w.admin("token", "create", "ops", "--role", "owner", "--json")
        ops = json.loads(created.stdout)["token"]
        tokens = json.loads((await w.admin("token", "list", "--json")).stdout)["tokens"]
        bootstrap = [t for t in tokens if t["label"] == "bootstrap" and not t["revoked"]]
        assert len(bootstrap) == 1
        await kici_admin(w.url, ops, "token", "revoke", bootstrap[0]["id"])
        assert (await w.admin("token", "list", check=False)).code != 0

        w.proc.stop()
        await anyio.to_thread.run_sync(w.proc.start)
        refused = await w.admin("token", "list", check=False)
        assert refused.code != 0 and "Invalid or expired token" in refused.stdout + refused.stderr
        assert w.proc.log_count("KICI_BOOTSTRAP_ADMIN_TOKEN was revoked and stays revoked") == 1

        # rotation: a new value works after the next restart
        w.proc.stop()
        rotated = "kat-admin-rotated-" + uuid.uuid4().hex
        w.proc.env["KICI_BOOTSTRAP_ADMIN_TOKEN"] = rotated
        await anyio.to_thread.run_sync(w.proc.start)
        listed = json.loads((await kici_admin(w.url, rotated, "token", "list", "--json")).stdout)["tokens"]
        assert [t["revoked"] for t in listed if t["label"] == "bootstrap"] == [True, False]
        assert (await w.admin("token", "list", check=False)).code != 0
    finally:
        shutdown(w)


# ------------------------------------------------------------------------------------------ local sources
def _git_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
    }
    (repo / "README.md").write_text("hello\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)
    return repo


async def test_local_sources_need_an_opt_in_and_verification(
    world: Independent, module_db_url: str, gh: GitHubServer, tmp_path: Path
) -> None:
    repo = _git_repo(tmp_path)
    refused = await world.admin(
        "source",
        "add",
        "generic",
        "--org",
        ORG,
        "--name",
        "mine",
        "--local-repo",
        str(repo),
        "--secret",
        "local-secret",
        check=False,
    )
    assert refused.code != 0
    assert "local sources are disabled: set KICI_ALLOW_LOCAL_SOURCES=true (or KICI_DEV=true)" in (
        refused.stdout + refused.stderr
    )

    w = boot(module_db_url, gh, tmp_path / "local", register=False, KICI_ALLOW_LOCAL_SOURCES="true")
    try:
        unverified = await w.admin(
            "source",
            "add",
            "generic",
            "--org",
            ORG,
            "--name",
            "open",
            "--local-repo",
            str(repo),
            "--verification",
            "none",
            check=False,
        )
        assert unverified.code != 0 and "a local source needs verification" in unverified.stdout + unverified.stderr
        created = await w.admin(
            "source",
            "add",
            "generic",
            "--org",
            ORG,
            "--name",
            "mine",
            "--local-repo",
            str(repo),
            "--secret",
            "local-secret",
            "--json",
        )
        assert json.loads(created.stdout)["source"]["verificationMethod"] == "hmac_sha256"
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "after": "0" * 40,
                "repository": {"full_name": "acme/repo", "clone_url": repo.as_uri()},
            }
        ).encode()
        resp = await w.post(f"/webhook/{ORG}/generic/mine", body, {"x-event-type": "push"})
        assert resp.status_code == 401
        sig = "sha256=" + hmac.new(b"local-secret", body, hashlib.sha256).hexdigest()
        resp = await w.post(f"/webhook/{ORG}/generic/mine", body, {"x-event-type": "push", "x-signature-256": sig})
        assert resp.status_code == 202, resp.text
    finally:
        shutdown(w)
    # the module's orchestrator (no opt-in) does not serve the local source that now exists in the database
    resp = await world.post(f"/webhook/{ORG}/generic/mine", body, {"x-event-type": "push", "x-signature-256": sig})
    assert resp.status_code == 404 and resp.json() == {"rejected": True, "reason": "Unknown source"}


# ------------------------------------------------------------------------------------------ files
async def test_payload_files_are_private(world: Independent) -> None:
    delivery = await signed_push_processed(world)

    async def offloaded() -> Path | None:
        found = list(world.data_dir.rglob(f"{delivery}.json.gz"))
        return found[0] if found else None

    path = await poll(offloaded, BOUND, lambda: "payload never reached object storage")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# ------------------------------------------------------------------------------------------ slow clients
async def test_slow_clients_are_let_go(world: Independent) -> None:
    """Slowloris connections are closed after the header timeout, slow bodies get 408, oversized admin bodies
    413; the server answers everyone else meanwhile."""
    w = world
    port = w.proc.port

    def slow_headers() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
            sock.sendall(b"POST /webhook/acme/github HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks)

    answers: list[bytes] = []

    async def one() -> None:
        answers.append(await anyio.to_thread.run_sync(slow_headers, abandon_on_cancel=True))

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(one)
            async with httpx.AsyncClient(timeout=BOUND) as http:  # served while they hang on
                assert (await http.get(f"{w.url}/health")).status_code == 200
    assert len(answers) == 30 and all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]

    # headers complete, body never finishes: 408 after the body timeout
    answer = await raw(port, b"POST /webhook/acme/github HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}")
    assert status_of(answer) == 408, answer[:300]
    answer = await raw(
        port,
        b"POST /api/v1/admin/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n{",
    )
    assert status_of(answer) == 408, answer[:300]

    # the admin API refuses bodies over the limit, declared or streamed
    big = json.dumps({"label": "x" * (300 * 1024), "role": "auditor"}).encode()
    resp = await admin_http(
        w, "POST", "/api/v1/admin/tokens", content=big, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413 and resp.text == "Payload Too Large"

    async def chunks() -> Any:
        for _ in range(40):
            yield b" " * 8192

    resp = await admin_http(
        w, "POST", "/api/v1/admin/tokens", content=chunks(), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413 and resp.text == "Payload Too Large"
    await signed_push_processed(w)
