"""``kici-standalone`` against bad input: rejected webhooks are answered 4xx and never recorded; invalid lock
files end ``lockfile_corrupt`` with a message naming the offending path; GitHub failures on the lock-file fetch
are ``lockfile_missing`` (404) or retried and finally parked ``failed`` with the reason (decision 10), and
``kici-admin event-log replay`` processes the delivery once the fault is gone. The orchestrator stays up
throughout.
"""

from __future__ import annotations

import json
import socket

import anyio
import httpx
import pytest

from tests.e2e.conftest import (
    GENERIC_NAME,
    ORG,
    Independent,
    generic_headers,
    github_headers,
    github_signature,
    install,
    job,
    lockfile,
    new_delivery,
    poll,
    push_body,
    push_workflow,
)

pytestmark = pytest.mark.anyio

MAIN = {"type": "glob", "pattern": "main"}


async def _not_recorded(w: Independent, *deliveries: str) -> None:
    rows = await w.query(
        "SELECT delivery_id FROM event_log WHERE delivery_id = ANY(%s) OR split_part(delivery_id, ':', 4) = ANY(%s)",
        list(deliveries),
        list(deliveries),
    )
    assert rows == [], f"rejected deliveries were recorded: {rows}"


async def _healthy(w: Independent) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{w.url}/health")).status_code == 200
    assert w.proc.running


async def test_bad_signatures_and_unknown_targets_are_rejected_unrecorded(independent: Independent) -> None:
    w = independent
    install(w.gh, "acme/app")
    used: list[str] = []
    body = push_body("acme/app")
    good = github_signature(body)
    bad_signatures = [
        github_signature(body, "not-the-secret"),  # wrong secret
        github_signature(body + b" "),  # signature of other bytes
        "sha256=" + "zz" * 32,  # not hex
        "sha256=" + good[7:-2],  # too short
        good[7:],  # no scheme
        "sha1=" + good[7:47],  # wrong scheme
        "",
    ]
    for sig in bad_signatures:
        delivery = new_delivery()
        used.append(delivery)
        resp = await w.post(f"/webhook/{ORG}/github", body, github_headers(body, delivery, signature=sig))
        assert resp.status_code == 401, (sig, resp.text)
        assert resp.json() == {"rejected": True, "reason": "Invalid signature"}
    missing = new_delivery()
    used.append(missing)
    headers = github_headers(body, missing)
    del headers["X-Hub-Signature-256"]
    resp = await w.post(f"/webhook/{ORG}/github", body, headers)
    assert resp.status_code == 401

    unknown_org = new_delivery()
    resp = await w.post("/webhook/someone-else/github", body, github_headers(body, unknown_org))
    assert resp.status_code == 404 and resp.json() == {"rejected": True, "reason": "Unknown organization"}
    unknown_app = new_delivery()
    resp = await w.post(f"/webhook/{ORG}/github", body, github_headers(body, unknown_app, app_id="999999"))
    assert resp.status_code == 404
    no_target = new_delivery()
    headers = github_headers(body, no_target)
    del headers["X-GitHub-Hook-Installation-Target-ID"]
    resp = await w.post(f"/webhook/{ORG}/github", body, headers)
    assert resp.status_code == 400 and resp.json()["reason"] == "Missing GitHub App target headers"
    no_event = new_delivery()
    headers = github_headers(body, no_event)
    del headers["X-GitHub-Event"]
    resp = await w.post(f"/webhook/{ORG}/github", body, headers)
    assert resp.status_code == 400

    generic = json.dumps({"a": 1}).encode()
    unknown_source = new_delivery()
    resp = await w.post(f"/webhook/{ORG}/generic/no-such-source", generic, generic_headers(generic, unknown_source))
    assert resp.status_code == 404 and resp.json() == {"rejected": True, "reason": "Unknown source"}
    resp = await w.post(f"/webhook/other/generic/{GENERIC_NAME}", generic, generic_headers(generic, unknown_source))
    assert resp.status_code == 404
    wrong_generic = new_delivery()
    resp = await w.post(
        f"/webhook/{ORG}/generic/{GENERIC_NAME}", generic, generic_headers(generic, wrong_generic, secret="nope")
    )
    assert resp.status_code == 401

    await _not_recorded(w, *used, unknown_org, unknown_app, no_target, no_event, unknown_source, wrong_generic)
    await _healthy(w)


async def test_oversize_truncated_and_non_json_bodies_are_rejected_unrecorded(independent: Independent) -> None:
    w = independent
    big = b'{"pad":"' + b"x" * (300 * 1024) + b'"}'  # over KICI_HTTP_MAX_BODY_BYTES=256 KiB
    oversize = new_delivery()
    resp = await w.post(f"/webhook/{ORG}/github", big, github_headers(big, oversize))
    assert resp.status_code == 413 and resp.text == "Payload Too Large"
    # the global limit applies to the generic route too (its per-source JSON 413 is covered by the unit tests)
    generic_big = b'{"pad":"' + b"x" * (1024 * 1024) + b'"}'
    generic_oversize = new_delivery()
    resp = await w.post(
        f"/webhook/{ORG}/generic/{GENERIC_NAME}", generic_big, generic_headers(generic_big, generic_oversize)
    )
    assert resp.status_code == 413 and resp.text == "Payload Too Large"

    not_json = new_delivery()
    for body in (b"this is not json", b"[1, 2, 3]", b'{"truncated": ', b"\xff\xfe\x00binary"):
        resp = await w.post(f"/webhook/{ORG}/github", body, github_headers(body, not_json))
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json() == {"rejected": True, "reason": "Invalid payload"}

    # Declared Content-Length over the limit: refused before the body is read.
    declared = new_delivery()
    small = push_body("acme/app")
    headers = github_headers(small, declared)
    answer = await _raw_post(w, f"/webhook/{ORG}/github", headers, small, content_length=10 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    # Content-Length larger than what is sent, then the client stops sending: never accepted.
    truncated = new_delivery()
    full = push_body("acme/app", note="truncated")
    headers = github_headers(full, truncated)
    answer = await _raw_post(w, f"/webhook/{ORG}/github", headers, full[:100], content_length=len(full))
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]

    await _not_recorded(w, oversize, generic_oversize, not_json, declared, truncated)
    await _healthy(w)


async def _raw_post(w: Independent, path: str, headers: dict[str, str], body: bytes, *, content_length: int) -> bytes:
    """Send a request by hand with a chosen Content-Length, half-close, and return whatever comes back."""

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", w.proc.port), timeout=20) as sock:
            head = [
                f"POST {path} HTTP/1.1",
                "Host: 127.0.0.1",
                f"Content-Length: {content_length}",
                "Connection: close",
            ] + [f"{k}: {v}" for k, v in headers.items()]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    return await anyio.to_thread.run_sync(run)


BAD_LOCKFILES = {
    "acme/bad-json": (b'{"schemaVersion": 29, "workflows": [', "not valid JSON"),
    "acme/bad-schema": (
        lockfile([push_workflow("b", MAIN, [job("a")])], schema=28),
        "schemaVersion: unsupported lock-file schema version 28",
    ),
    "acme/bad-needs": (
        lockfile([push_workflow("b", MAIN, [job("a", "ghost")])]),
        'workflows[0].jobs[0].needs[0]: unknown job "ghost"',
    ),
    "acme/bad-cycle": (
        lockfile([push_workflow("b", MAIN, [job("a", "c"), job("c", "a")])]),
        "workflows[0].jobs[0].needs: needs cycle: a -> c -> a",
    ),
    "acme/bad-pattern": (
        lockfile([push_workflow("b", {"type": "regex", "pattern": "(open"}, [job("a")])]),
        "workflows[0].triggers[0].branches[0]: invalid regex /(open/",
    ),
}


async def test_invalid_lock_files_are_recorded_corrupt_with_the_path(independent: Independent) -> None:
    w = independent
    sent: dict[str, str] = {}
    for repo, (content, _) in BAD_LOCKFILES.items():
        install(w.gh, repo, content=content)
        delivery, resp = await w.push(repo)
        assert resp.status_code == 202
        sent[repo] = delivery
    for repo, delivery in sent.items():
        row = await w.wait_status(delivery, "lockfile_corrupt", "failed")
        expected = BAD_LOCKFILES[repo][1]
        assert row["status"] == "lockfile_corrupt", (repo, row)
        assert expected in (row["error_message"] or ""), (repo, row["error_message"])
        assert row["repo_identifier"] == repo and row["matched_count"] == 0
        assert await w.runs(delivery) == []
    shown = (await w.admin("event-log", "show", sent["acme/bad-needs"], "--org", ORG)).stdout
    assert "Status:        lockfile_corrupt" in shown and 'unknown job "ghost"' in shown
    await _healthy(w)


async def test_lockfile_fetch_failures_missing_retried_parked_and_replayed(independent: Independent) -> None:
    w = independent
    install(w.gh, "acme/no-lockfile", "acme/flaky", "acme/locked-out")
    for ref in ("main", "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"):
        with w.gh._lock:
            w.gh._files.pop(("acme/no-lockfile", ref, ".kici/kici.lock.json"), None)
    flaky = "/repos/acme/flaky/contents/*"
    locked = "/repos/acme/locked-out/contents/*"
    now = {"Retry-After": "0"}  # GitHub's own pacing header: the client retries at once instead of backing off
    w.gh.fail(flaky, 500, times=4, headers=now)  # exactly one failed processing attempt (the client tries 4 times)
    w.gh.fail(locked, 401, times=10_000, message="Bad credentials", headers=now)

    missing, _ = await w.push("acme/no-lockfile")
    retried, _ = await w.push("acme/flaky")
    parked, _ = await w.push("acme/locked-out")

    row = await w.wait_status(missing, "lockfile_missing")
    assert row["error_message"] is None and row["repo_identifier"] == "acme/no-lockfile"

    # 500s: the failed attempt is recorded, the delivery waits for its retry, then the retry processes it.
    row = await w.wait_status(retried, "processed")
    assert row["attempts"] == 2 and "HTTP 500" in row["last_error"]
    assert len(await w.runs(retried)) == 1

    # 401s that persist: retried with backoff, never "missing"; once attempts run out it is parked as failed.
    row = await w.wait_event(parked, lambda r: r["error_message"] is not None)
    assert "HTTP 401" in row["error_message"] and row["inbox_state"] == "pending" and row["attempts"] >= 1
    assert row["status"] == "received"

    # Skip the long backoff: make the next attempt the last one, due now (between attempts, not during one).
    async def last_attempt_due() -> bool | None:
        changed = await w.execute(
            "UPDATE delivery_inbox SET attempts = 7, available_at = now() WHERE locked_until IS NULL AND "
            "state = 'pending' AND event_log_id = (SELECT id FROM event_log WHERE delivery_id = %s)",
            parked,
        )
        return True if changed == 1 else None

    await poll(last_attempt_due)
    row = await w.wait_status(parked, "failed")
    assert row["inbox_state"] == "failed" and "HTTP 401" in row["error_message"]
    listing = (await w.admin("event-log", "list", "--org", ORG, "--status", "failed")).stdout
    assert parked in listing
    assert await w.runs(parked) == []

    with w.gh._lock:
        w.gh._faults = [f for f in w.gh._faults if f.pattern != locked]
    out = await w.admin("event-log", "replay", parked, "--org", ORG)
    assert f"Delivery {parked} queued for processing again." in out.stdout
    row = await w.wait_status(parked, "processed")
    assert row["error_message"] is None or "401" not in row["error_message"]
    assert [name for name, _ in await w.runs(parked)] == ["build"]
    await _healthy(w)
