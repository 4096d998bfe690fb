"""A corpus of hostile webhook requests, admin requests and agent frames against one ``kici-standalone``.

Each hostile item is sent between ordinary signed deliveries. For every item: no 5xx, the process stays up, the
answer comes within a bound; at the end every ordinary delivery has been processed (nothing lost around them).
Lock-file attacks live with the processing tests; this corpus covers what reaches the HTTP and WebSocket edges.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import (
    ADMIN_TOKEN,
    BOUND,
    GENERIC_NAME,
    ORG,
    Independent,
    boot,
    generic_headers,
    github_headers,
    github_signature,
    github_world,
    install,
    new_delivery,
    push_body,
    shutdown,
)

pytestmark = pytest.mark.anyio

ITEM_BOUND = 30.0
"""Seconds any single hostile item may take to be answered (or refused)."""


@pytest.fixture(scope="module")
def corpus_world(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Independent]:
    gh = github_world()
    try:
        w = boot(
            module_db_url,
            gh,
            tmp_path_factory.mktemp("corpus"),
            KICI_HTTP_MAX_BODY_BYTES=str(256 * 1024),
            KICI_AGENT_AUTH="token",
            KICI_HTTP_HEADER_TIMEOUT_MS="2000",
            KICI_HTTP_BODY_TIMEOUT_MS="2000",
        )
        install(gh, "acme/app")
        try:
            yield w
        finally:
            shutdown(w)
    finally:
        gh.close()


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=ITEM_BOUND) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def _req(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: x",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


DEEP = b"[" * 50_000 + b"]" * 50_000
PUSH = push_body("acme/app")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


def _webhook_corpus() -> list[tuple[str, bytes]]:
    """(name, raw request bytes) of hostile webhook requests."""
    signed = github_headers(PUSH, "corpus-dup")
    items: list[tuple[str, bytes]] = []

    def gh(name: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        items.append(
            (name, _req("POST", path, headers if headers is not None else github_headers(body, new_delivery()), body))
        )

    gh("dot-dot org", "/webhook/%2e%2e/github", PUSH)
    gh("encoded slash org", "/webhook/a%2F..%2Fb/github", PUSH)
    gh("NUL org", "/webhook/ac%00me/github", PUSH)
    gh("long org", "/webhook/" + "o" * 5000 + "/github", PUSH)
    gh("deep array", f"/webhook/{ORG}/github", DEEP)
    gh("deep object", f"/webhook/{ORG}/github", b'{"a":' * 20_000 + b"0" + b"}" * 20_000)
    gh("NaN", f"/webhook/{ORG}/github", b'{"x":NaN}')
    gh("Infinity", f"/webhook/{ORG}/github", b'{"x":-Infinity}')
    gh("lone surrogate", f"/webhook/{ORG}/github", b'{"ref":"refs/heads/\\ud800"}')
    gh("NUL in JSON string", f"/webhook/{ORG}/github", b'{"ref":"refs/heads/ma\\u0000in"}')
    gh("invalid UTF-8", f"/webhook/{ORG}/github", b'{"ref":"\xff\xfe"}')
    gh("huge number", f"/webhook/{ORG}/github", b'{"n":' + b"9" * 100_000 + b"}")
    gh("array body", f"/webhook/{ORG}/github", b"[1,2,3]")
    gh("empty body", f"/webhook/{ORG}/github", b"")
    gh("long delivery id", f"/webhook/{ORG}/github", PUSH, github_headers(PUSH, "d" * 5000))
    gh("delivery id with slashes", f"/webhook/{ORG}/github", PUSH, github_headers(PUSH, "../../etc/passwd"))
    gh("duplicate of an accepted delivery", f"/webhook/{ORG}/github", PUSH, signed)
    gh("duplicate again", f"/webhook/{ORG}/github", PUSH, signed)
    gh("unsigned", f"/webhook/{ORG}/github", PUSH, {**github_headers(PUSH, new_delivery()), "X-Hub-Signature-256": ""})
    gh(
        "form body without payload",
        f"/webhook/{ORG}/github",
        b"a=1",
        {**github_headers(b"a=1", new_delivery()), "Content-Type": "application/x-www-form-urlencoded"},
    )
    gh(
        "form payload deep",
        f"/webhook/{ORG}/github",
        b"payload=" + b"%5B" * 5000 + b"%5D" * 5000,
        {
            **github_headers(b"payload=" + b"%5B" * 5000 + b"%5D" * 5000, new_delivery()),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    gh("oversize", f"/webhook/{ORG}/github", b"x" * (300 * 1024))
    generic = b'{"event":"build"}'
    items.append(
        (
            "generic dot-dot source",
            _req("POST", f"/webhook/{ORG}/generic/..", generic_headers(generic, new_delivery()), generic),
        )
    )
    items.append(
        (
            "generic deep",
            _req("POST", f"/webhook/{ORG}/generic/{GENERIC_NAME}", generic_headers(DEEP, new_delivery()), DEEP),
        )
    )
    items.append(
        (
            "generic idempotency key path traversal",
            _req("POST", f"/webhook/{ORG}/generic/{GENERIC_NAME}", generic_headers(generic, "../../../x"), generic),
        )
    )
    items.append(
        (
            "generic unicode delivery id",
            _req(
                "POST",
                f"/webhook/{ORG}/generic/{GENERIC_NAME}",
                {**generic_headers(generic, "x"), "X-Delivery-Id": "caf\u00e9"},
                generic,
            ),
        )
    )
    items.append(("bad method", _req("DELETE", f"/webhook/{ORG}/github", {})))
    items.append(("garbage request line", b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"))
    items.append(("HTTP/0.9", b"GET /\r\n\r\n"))
    items.append(("huge header", _req("POST", f"/webhook/{ORG}/github", {"X-Big": "a" * 200_000}, PUSH)))
    items.append(
        (
            "bad content-length",
            b"POST /webhook/acme/github HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
        )
    )
    items.append(
        (
            "chunked garbage",
            b"POST /webhook/acme/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
    )
    items.append(("headers never finish", b"POST /webhook/acme/github HTTP/1.1\r\nHost: x\r\n"))
    items.append(
        ("body never finishes", b"POST /webhook/acme/github HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{")
    )
    return items


def _admin_corpus() -> list[tuple[str, bytes]]:
    items: list[tuple[str, bytes]] = []

    def post(name: str, path: str, body: bytes) -> None:
        items.append((name, _req("POST", path, AUTH, body)))

    post("token role null", "/api/v1/admin/tokens", b'{"label":"x","role":null}')
    post("token role object", "/api/v1/admin/tokens", b'{"label":"x","role":{"$ne":1}}')
    post("token label NUL", "/api/v1/admin/tokens", b'{"label":"a\\u0000b","role":"auditor"}')
    post("token label number", "/api/v1/admin/tokens", b'{"label":5,"role":"auditor"}')
    post("token deep", "/api/v1/admin/tokens", DEEP)
    post("token NaN", "/api/v1/admin/tokens", b'{"label":NaN,"role":"auditor"}')
    post("token not JSON", "/api/v1/admin/tokens", b"{{{{")
    post("token body array", "/api/v1/admin/tokens", b"[]")
    post("token oversize", "/api/v1/admin/tokens", b'{"label":"' + b"x" * (300 * 1024) + b'"}')
    post(
        "generic source dot-dot name",
        "/api/v1/admin/generic-sources",
        b'{"orgId":"acme","name":"..","verificationConfig":{"secret":"s"}}',
    )
    post(
        "generic source NUL org",
        "/api/v1/admin/generic-sources",
        b'{"orgId":"a\\u0000","name":"n","verificationConfig":{"secret":"s"}}',
    )
    post(
        "generic source huge rate",
        "/api/v1/admin/generic-sources",
        b'{"orgId":"acme","name":"n2","rateLimitRpm":1e400,"verificationConfig":{"secret":"s"}}',
    )
    post(
        "local source without opt-in",
        "/api/v1/admin/generic-sources",
        b'{"orgId":"acme","name":"l","providerType":"local","gitConfig":{"url":"file:///etc"}}',
    )
    post("agent token labels wrong type", "/api/v1/agent-tokens", b'{"labels":"linux"}')
    post("agent token deep labels", "/api/v1/agent-tokens", b'{"labels":' + b"[" * 200 + b"]" * 200 + b"}")
    post("release unknown agent", "/api/v1/admin/agents/%2e%2e/release", b"")
    post("replay NUL delivery", "/api/v1/admin/event-log/x%00/replay?orgId=acme", b"")
    items.append(("event log NUL", _req("GET", "/api/v1/admin/event-log/%00?orgId=acme", AUTH)))
    items.append(
        ("event log huge limit", _req("GET", "/api/v1/admin/event-log?orgId=acme&limit=99999999999999999999", AUTH))
    )
    items.append(("event log bad since", _req("GET", "/api/v1/admin/event-log?orgId=acme&since=yesterday", AUTH)))
    items.append(("event log long id", _req("GET", "/api/v1/admin/event-log/" + "a" * 20_000 + "?orgId=acme", AUTH)))
    items.append(("runs bad id", _req("GET", "/api/v1/admin/runs/not-a-uuid", AUTH)))
    items.append(("runs NUL id", _req("GET", "/api/v1/admin/runs/%00/logs", AUTH)))
    items.append(("revoke token garbage id", _req("DELETE", "/api/v1/admin/tokens/%ff%fe", AUTH)))
    items.append(("wrong bearer", _req("GET", "/api/v1/admin/tokens", {"Authorization": "Bearer " + "x" * 10_000})))
    items.append(("basic auth", _req("GET", "/api/v1/admin/tokens", {"Authorization": "Basic Og=="})))
    return items


def _agent_frames(token: str) -> list[tuple[str, list[str | bytes]]]:
    """(name, frames after a successful auth.request) for hostile agents."""
    auth = json.dumps({"type": "auth.request", "token": token, "protocolVersion": 1})
    reg = json.dumps({"type": "agent.register", "messageId": "m", "agentId": "corpus", "labels": ["x"]})

    def after_register(*frames: str | bytes) -> list[str | bytes]:
        return [auth, reg, *frames]

    job = {
        "runId": "00000000-0000-0000-0000-000000000000",
        "jobId": "00000000-0000-0000-0000-000000000001",
        "messageId": "m",
        "timestamp": 1,
    }
    return [
        ("no auth", [reg]),
        ("token of another kind", [json.dumps({"type": "auth.request", "token": ADMIN_TOKEN, "protocolVersion": 1})]),
        ("deep auth", [b"[" * 100_000 + b"]" * 100_000]),
        ("NaN auth", ['{"type":"auth.request","token":NaN,"protocolVersion":1}']),
        ("binary frame", [auth, b"\x00\xff"]),
        (
            "register agent id NUL",
            [auth, json.dumps({"type": "agent.register", "messageId": "m", "agentId": "a\u0000b", "labels": ["x"]})],
        ),
        (
            "register agent id path",
            [auth, json.dumps({"type": "agent.register", "messageId": "m", "agentId": "../../x", "labels": ["x"]})],
        ),
        (
            "register huge labels",
            [
                auth,
                json.dumps(
                    {"type": "agent.register", "messageId": "m", "agentId": "big", "labels": ["l" * 1000] * 1000}
                ),
            ],
        ),
        ("status for unknown job", after_register(json.dumps({"type": "job.status", "state": "success", **job}))),
        (
            "log for unknown job",
            after_register(json.dumps({"type": "log.chunk", "stepIndex": 0, "lines": ["x"], **job})),
        ),
        ("log with NUL", after_register(json.dumps({"type": "log.chunk", "stepIndex": 0, "lines": ["\u0000"], **job}))),
        (
            "step index huge",
            after_register(
                json.dumps({"type": "step.status", "stepIndex": 10**30, "stepName": "s", "state": "success", **job})
            ),
        ),
        ("job id not a uuid", after_register(json.dumps({"type": "job.ack", **{**job, "jobId": "x\u0000"}}))),
        ("deep frame", after_register(b"[" * 100_000 + b"]" * 100_000)),
        ("unknown type", after_register(json.dumps({"type": "x" * 10_000}))),
    ]


async def _ordinary(w: Independent, delivered: list[str]) -> None:
    delivery, resp = await w.push("acme/app")
    assert resp.status_code == 202, resp.text
    delivered.append(delivery)


async def test_hostile_corpus_leaves_the_orchestrator_serving_and_loses_nothing(corpus_world: Independent) -> None:
    w = corpus_world
    delivered: list[str] = []
    # one accepted delivery the corpus then duplicates
    resp = await w.post(f"/webhook/{ORG}/github", PUSH, github_headers(PUSH, "corpus-dup"))
    assert resp.status_code == 202, resp.text
    delivered.append("corpus-dup")

    for name, data in [*_webhook_corpus(), *_admin_corpus()]:
        await _ordinary(w, delivered)
        with anyio.fail_after(ITEM_BOUND):
            answer = await anyio.to_thread.run_sync(_raw, w.proc.port, data)
        if answer:
            assert answer.startswith(b"HTTP/1.1 "), (name, answer[:200])
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (name, answer[:500], w.proc.tail())
        assert w.proc.running, (name, w.proc.tail())

    created = await w.admin("agent-token", "create", "--json")
    token = json.loads(created.stdout)["token"]
    for name, frames in _agent_frames(token):
        await _ordinary(w, delivered)
        with anyio.fail_after(ITEM_BOUND):
            try:
                async with connect(f"ws://127.0.0.1:{w.proc.port}/ws", max_size=None) as ws:
                    for frame in [*frames, "{not json"]:  # the last one makes a healthy server close with 4003
                        await ws.send(frame)
                    while True:  # until the server closes the socket
                        await ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                assert code != 1011, (name, exc)  # 1011: the server crashed handling it
            except InvalidStatus as exc:
                assert exc.response.status_code < 500, name
        assert w.proc.running, (name, w.proc.tail())

    async with httpx.AsyncClient(timeout=BOUND) as http:
        assert (await http.get(f"{w.url}/health")).status_code == 200
    for delivery in delivered:  # nothing lost: every ordinary delivery was processed
        row = await w.wait_status(delivery, "processed", "duplicate")
        assert row["status"] == "processed", (delivery, row)
    assert not [line for line in w.proc.lines if '"level":"error"' in line and "Traceback" in line]


def test_corpus_is_not_trivial() -> None:
    assert len(_webhook_corpus()) >= 30 and len(_admin_corpus()) >= 20 and len(_agent_frames("kat_x")) >= 15
    assert github_signature(b"") != ""  # the corpus signs what it sends
