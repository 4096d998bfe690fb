"""The web dashboard's routes and rendering against the real app (uvicorn on loopback, embedded PostgreSQL):
sign-in and sessions (cookie attributes, signing, revocation, sign-out), CSRF and role checks on actions,
security headers, escaping of hostile text, the run and job pages, the live log stream and its resumption,
the raw log, deliveries with their decision traces, agents and queue, ``KICI_BASE_PATH`` (with and without
the prefix) and check-run links."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.test_agents_e2e import Harness, harness
from tests.support import pg as _pg
from tests.support.agents import RawAgent, job, lock_repo, push

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

TOKEN = "dashboard-owner-token-" + "7" * 20
ENV = {"KICI_SECRET_KEY": "cd" * 32, "KICI_BOOTSTRAP_ADMIN_TOKEN": TOKEN}
XSS = '<img src=x onerror="alert(1)">'
_NONCE = re.compile(r'name="nonce" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=20, follow_redirects=False)


async def sign_in(http: httpx.AsyncClient, token: str, *, prefix: str = "", nxt: str = "") -> httpx.Response:
    page = await http.get(f"{prefix}/dashboard/login", params={"next": nxt} if nxt else None)
    assert page.status_code == 200, page.text
    nonce = _NONCE.search(page.text)
    assert nonce, page.text
    return await http.post(f"{prefix}/dashboard/login", data={"token": token, "nonce": nonce.group(1), "next": nxt})


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, html
    return found.group(1)


async def api_token(h: Harness, label: str, role: str, routing_key: str | None = None) -> str:
    async with httpx.AsyncClient(base_url=h.base, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        body: dict[str, Any] = {"label": label, "role": role}
        if routing_key:
            body["routingKey"] = routing_key
        r = await api.post("/api/v1/admin/tokens", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


async def run_ids(h: Harness, expected: int) -> dict[str, str]:
    rows: list[dict[str, Any]] = []

    async def created() -> bool:
        rows[:] = await h.query("SELECT run_id::text AS id, workflow_name FROM execution_runs")
        return len(rows) >= expected

    await h.wait_for(created, what=f"{expected} runs")
    return {r["workflow_name"]: r["id"] for r in rows}


# ------------------------------------------------------------------------------------------------ sign-in
async def test_sign_in_session_cookie_sign_out_and_revocation(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path, **ENV) as (h, _), client(h.base) as http:
        first = await http.get("/dashboard/")
        assert first.status_code == 303 and first.headers["location"] == "./login?next="
        deep = await http.get("/dashboard/runs/abc", params={"x": "1"})
        assert deep.headers["location"] == "../login?next=runs%2Fabc%3Fx%3D1"
        login = await http.get("/dashboard/login")
        assert login.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
        assert login.headers["x-frame-options"] == "DENY" and login.headers["x-content-type-options"] == "nosniff"
        assert "kici_login=" in login.headers["set-cookie"] and "samesite=strict" in login.headers["set-cookie"].lower()

        # wrong token, missing form nonce, foreign origin: refused, nothing echoed
        wrong = await sign_in(http, "not-a-token-" + "x" * 30)
        assert wrong.status_code == 401 and "Invalid or expired token" in wrong.text
        assert "not-a-token" not in wrong.text and "set-cookie" not in {
            k.lower() for k in wrong.headers if "kici_session" in wrong.headers[k]
        }
        forged = await http.post("/dashboard/login", data={"token": TOKEN, "nonce": "guess"})
        assert forged.status_code == 403 and "kici_session" not in forged.headers.get("set-cookie", "")
        nonce = _NONCE.search((await http.get("/dashboard/login")).text)
        assert nonce
        foreign = await http.post(
            "/dashboard/login",
            data={"token": TOKEN, "nonce": nonce.group(1)},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403

        ok = await sign_in(http, TOKEN, nxt="agents")
        assert ok.status_code == 303 and ok.headers["location"] == "./agents"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith("kici_session=") and "HttpOnly" in cookie and "Path=/" in cookie
        assert "SameSite=strict" in cookie and "Max-Age=43200" in cookie and "Secure" not in cookie  # plain http
        value = http.cookies["kici_session"]
        assert TOKEN not in value
        stored = await h.query("SELECT session_hash, csrf_token FROM dashboard_sessions")
        assert len(stored) == 1 and value.split(".")[0] not in stored[0]["session_hash"]

        home = await http.get("/dashboard/")
        assert home.status_code == 200 and "Runs" in home.text and "bootstrap · owner" in home.text
        assert TOKEN not in home.text and home.headers["cache-control"] == "no-store"
        # an open redirect through next= is not possible; signed in, the sign-in page moves on
        async with client(h.base) as second:
            assert (await sign_in(second, TOKEN, nxt="//evil.example/x")).headers["location"] == "./"
        assert (await http.get("/dashboard/login", params={"next": "deliveries"})).headers["location"] == "./deliveries"

        # a tampered signature is no session
        sid, sig = value.split(".")
        async with client(h.base) as forged_client:
            forged_client.cookies.set("kici_session", f"{sid}.{sig[::-1]}")
            assert (await forged_client.get("/dashboard/")).status_code == 303

        # sign-out needs the CSRF token, then the old cookie stops working everywhere
        assert (await http.post("/dashboard/logout", data={"csrf": "nope"})).status_code == 403
        out = await http.post("/dashboard/logout", data={"csrf": csrf_of(home.text)})
        assert out.status_code == 303 and out.headers["location"] == "./login"
        async with client(h.base) as replay:
            replay.cookies.set("kici_session", value)
            assert (await replay.get("/dashboard/")).status_code == 303

        # revoking the admin token ends its sessions
        auditor = await api_token(h, "viewer", "auditor")
        async with client(h.base) as viewer:
            assert (await sign_in(viewer, auditor)).status_code == 303
            assert (await viewer.get("/dashboard/")).status_code == 200
            await h.query("UPDATE admin_tokens SET revoked_at = now() WHERE label = 'viewer' RETURNING id")
            assert (await viewer.get("/dashboard/")).status_code == 303


# ------------------------------------------------------------------------------------------------ runs, logs
async def test_runs_run_page_log_stream_and_actions(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(
        tmp_path,
        {
            "ci": [
                job("build", ["x"], steps=[{"name": "compile", "run": "make"}]),
                job("test", ["x"], needs=["build"]),
            ],
            "gpu": [job("train", ["gpu"])],
        },
    )
    async with harness(db_url, tmp_path, **ENV) as (h, _), client(h.base) as http:
        await h.add_local_source(repo)
        agent = await RawAgent.join(h.port, "agent-1", ["x"])
        delivery = await push(h.base, repo, sha)
        d = await agent.expect("job.dispatch")
        runs = await run_ids(h, 2)
        ci, gpu = runs["ci"], runs["gpu"]
        await agent.ack(d)
        await agent.status(d, "running")
        await agent.step(d, 0, "compile", "running")
        await agent.log(d, 0, "\x1b[32mcompiling\x1b[0m", XSS, "\x1b]8;;javascript:alert(1)\x07link\x1b]8;;\x07")
        await agent.log(d, 0, "second chunk")
        assert (await sign_in(http, TOKEN)).status_code == 303

        async def logged() -> bool:
            return len(await h.query("SELECT id FROM log_chunks")) == 2

        await h.wait_for(logged, what="two log chunks stored")

        # agents and queue: the agent with its load, the gpu job with the reason it waits
        agents = (await http.get("/dashboard/agents")).text
        assert "<td>agent-1</td>" in agents and "1/1" in agents and "e2e" in agents
        assert "train" in agents and "no connected agent has &#39;gpu&#39;" in agents

        # runs list: newest first, filters, escaping
        listing = await http.get("/dashboard/")
        assert listing.status_code == 200
        assert f'href="./runs/{ci}"' in listing.text and f'href="./runs/{gpu}"' in listing.text
        assert (await http.get("/dashboard/", params={"workflow": "gpu"})).text.count('data-run="') == 1
        assert (await http.get("/dashboard/", params={"branch": "main"})).text.count('data-run="') == 2
        assert (await http.get("/dashboard/", params={"branch": "dev"})).text.count('data-run="') == 0
        assert (await http.get("/dashboard/", params={"status": "running"})).text.count('data-run="') == 1
        assert (await http.get("/dashboard/", params={"repo": "acme/repo", "source": "generic:x:y"})).text.count(
            'data-run="'
        ) == 0

        # run page: graph with the needs edge, job table, waiting reason of the gpu run, cancel for owners
        page = await http.get(f"/dashboard/runs/{ci}")
        assert page.status_code == 200
        assert "<svg" in page.text and 'class="edge"' in page.text and ">build</text>" in page.text
        assert "agent-1" in page.text and "compile" in page.text and 'id="cancel-run"' in page.text
        gpu_page = await http.get(f"/dashboard/runs/{gpu}")
        assert "waiting: no connected agent has &#39;gpu&#39;" in gpu_page.text
        delivery = (await h.query("SELECT delivery_id FROM event_log"))[0]["delivery_id"]  # <routing key>:<raw id>
        assert f'href="../delivery?org=acme&amp;id={quote(delivery, safe="")}"' in page.text
        assert (await http.get("/dashboard/runs/00000000-0000-0000-0000-000000000000")).status_code == 404

        # job page: ANSI as classes, hostile text escaped, OSC dropped, line anchors, stream and raw links
        job_id = d["jobId"]
        log_page = await http.get(f"/dashboard/runs/{ci}/jobs/{job_id}")
        assert log_page.status_code == 200
        html = log_page.text
        assert '<span class="fg2">compiling</span>' in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html and XSS not in html
        assert "javascript:" not in html and ">link<" in html
        assert 'id="L1"' in html and 'id="L4"' in html and 'href="#L4"' in html
        stream_url = f"/dashboard/runs/{ci}/jobs/{job_id}/stream"
        assert f'data-stream="../../../runs/{ci}/jobs/{job_id}/stream?after=' in html
        raw = await http.get(f"/dashboard/runs/{ci}/jobs/{job_id}/log.txt")
        assert (
            raw.headers["content-type"].startswith("text/plain") and "attachment" in raw.headers["content-disposition"]
        )
        assert (
            raw.text
            == f"\x1b[32mcompiling\x1b[0m\n{XSS}\n\x1b]8;;javascript:alert(1)\x07link\x1b]8;;\x07\nsecond chunk\n"
        )

        # the stream: every chunk after Last-Event-ID, exactly once, then the end of the job
        chunk_ids = [r["id"] for r in await h.query("SELECT id FROM log_chunks ORDER BY id")]
        await agent.log(d, 0, "third chunk")
        await agent.status(d, "success")

        async def done() -> bool:
            rows = await h.query("SELECT status FROM execution_jobs WHERE job_id = %(j)s", j=job_id)
            return rows[0]["status"] == "success"

        await h.wait_for(done, what="build finished")
        events = await _events(http, stream_url, last_event_id=str(chunk_ids[0]))
        chunks = [e for e in events if e["event"] == "chunk"]
        assert [json.loads(c["data"])["lines"] for c in chunks] == [[[["", "second chunk"]]], [[["", "third chunk"]]]]
        assert int(chunks[0]["id"]) == chunk_ids[1] and events[-1]["event"] == "end"
        assert json.loads(events[-1]["data"]) == {"status": "success"}
        assert json.loads(chunks[0]["data"])["title"] == "Step 1: compile"
        everything = await _events(http, stream_url + "?after=0")
        assert len([e for e in everything if e["event"] == "chunk"]) == 3
        async with client(h.base) as anonymous:
            assert (await anonymous.get(stream_url)).status_code == 401

        # cancel: CSRF required, then the run is cancelled
        page = await http.get(f"/dashboard/runs/{gpu}")
        assert (await http.post(f"/dashboard/runs/{gpu}/cancel", data={"csrf": "wrong"})).status_code == 403
        assert (await h.query("SELECT status FROM execution_runs WHERE run_id = %(r)s", r=gpu))[0][
            "status"
        ] == "pending"
        cancelled = await http.post(f"/dashboard/runs/{gpu}/cancel", data={"csrf": csrf_of(page.text)})
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"../../runs/{gpu}?cancelled=1"
        assert (await h.query("SELECT status FROM execution_runs WHERE run_id = %(r)s", r=gpu))[0][
            "status"
        ] == "cancelled"

        # re-run the cancelled run: a new attempt linked to it
        page = await http.get(f"/dashboard/runs/{gpu}")
        assert 'id="rerun"' in page.text and 'id="cancel-run"' not in page.text
        rerun = await http.post(f"/dashboard/runs/{gpu}/rerun", data={"csrf": csrf_of(page.text)})
        assert rerun.status_code == 303, rerun.text
        attempt = await h.query(
            "SELECT run_id::text AS id, status FROM execution_runs WHERE original_run_id = %(r)s", r=gpu
        )
        assert len(attempt) == 1 and rerun.headers["location"] == f"../../runs/{attempt[0]['id']}?rerun_of={gpu}"
        shown = await http.get(f"/dashboard/runs/{attempt[0]['id']}", params={"rerun_of": gpu})
        assert "A new attempt of" in shown.text and 'id="cancel-run"' in shown.text

        # an auditor reads but cannot act; a token scoped to another source sees nothing of this one
        async with client(h.base) as viewer:
            assert (await sign_in(viewer, await api_token(h, "viewer", "auditor"))).status_code == 303
            page = await viewer.get(f"/dashboard/runs/{ci}")
            assert page.status_code == 200 and 'id="cancel-run"' not in page.text
            refused = await viewer.post(f"/dashboard/runs/{ci}/cancel", data={"csrf": csrf_of(page.text)})
            assert refused.status_code == 403 and "run.cancel" in refused.text
            delivery_page = await viewer.get("/dashboard/delivery", params={"org": "acme", "id": delivery})
            assert delivery_page.status_code == 200 and 'id="replay"' not in delivery_page.text
        async with client(h.base) as other:
            assert (await sign_in(other, await api_token(h, "other", "admin", "generic:zzz:1"))).status_code == 303
            assert (await other.get("/dashboard/")).text.count('data-run="') == 0
            assert (await other.get(f"/dashboard/runs/{ci}")).status_code == 403
            assert (await other.get("/dashboard/delivery", params={"org": "acme", "id": delivery})).status_code == 404
        await agent.close()


async def _events(http: httpx.AsyncClient, url: str, *, last_event_id: str | None = None) -> list[dict[str, str]]:
    """Read server-sent events until the stream's ``end`` event (the job has ended)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, str]] = []
    async with http.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        async for line in r.aiter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                    if current["event"] == "end":
                        break
                current = {}
                continue
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                current[name] = value
    return events


# ------------------------------------------------------------------------------------------------ deliveries
async def test_delivery_that_matched_nothing_says_why_and_can_be_replayed(db_url: str, tmp_path: Path) -> None:
    repo, sha = lock_repo(tmp_path, {"ci": [job("build", ["x"])]})
    async with harness(db_url, tmp_path, **ENV) as (h, _), client(h.base) as http:
        await h.add_local_source(repo)
        delivery = await _push_branch(h, repo, sha, f"feature/{XSS}")

        async def processed() -> bool:
            rows = await h.query("SELECT status FROM event_log WHERE delivery_id LIKE %(d)s", d=f"%:{delivery}")
            return bool(rows) and rows[0]["status"] == "processed"

        await h.wait_for(processed, what="delivery processed")
        delivery = (await h.query("SELECT delivery_id FROM event_log"))[0]["delivery_id"]
        assert (await sign_in(http, TOKEN)).status_code == 303
        listing = await http.get("/dashboard/deliveries")
        assert listing.status_code == 200 and delivery in listing.text and XSS not in listing.text
        assert '<span class="bad-text">none</span>' in listing.text
        page = await http.get("/dashboard/delivery", params={"org": "acme", "id": delivery})
        assert page.status_code == 200 and XSS not in page.text
        text = re.sub(r"<[^>]+>", "", page.text)
        assert "No workflow matched this push" in text
        assert "ci:\ndid not run" in text and "rejected by the branches filter" in text
        assert "does not match [&#34;main&#34;]" in text
        assert "feature/&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page.text

        inbox = (
            "SELECT i.state, i.updated_at FROM delivery_inbox i JOIN event_log e ON e.id = i.event_log_id"
            " WHERE e.delivery_id = %(d)s"
        )
        before = (await h.query(inbox, d=delivery))[0]
        replayed = await http.post(
            "/dashboard/delivery/replay", data={"csrf": csrf_of(page.text), "org": "acme", "id": delivery}
        )
        assert replayed.status_code == 303
        assert replayed.headers["location"] == f"../delivery?org=acme&id={quote(delivery, safe='')}&replayed=1"

        async def again() -> bool:
            row = (await h.query(inbox, d=delivery))[0]
            return row["state"] == "done" and row["updated_at"] > before["updated_at"]

        await h.wait_for(again, what="delivery processed again")
        assert (await http.get("/dashboard/delivery", params={"org": "acme", "id": "nope"})).status_code == 404


async def _push_branch(h: Harness, repo: Path, sha: str, branch: str) -> str:
    import uuid

    delivery = str(uuid.uuid4())
    body = {
        "ref": f"refs/heads/{branch}",
        "before": "0" * 40,
        "after": sha,
        "repository": {"full_name": "acme/repo", "name": "repo", "default_branch": "main", "clone_url": repo.as_uri()},
        "sender": {"login": "t", "id": 1},
    }
    async with httpx.AsyncClient(base_url=h.base) as http:
        r = await http.post(
            "/webhook/acme/generic/repo", json=body, headers={"x-event-type": "push", "x-delivery-id": delivery}
        )
        assert r.status_code in (200, 202), r.text
    return delivery


# ------------------------------------------------------------------------------------------------ base path
async def test_base_path_with_and_without_prefix_and_check_run_links(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path, KICI_BASE_PATH="/ci", **ENV) as (h, _), client(h.base) as http:
        bare = await http.get("/ci/dashboard")
        assert bare.status_code == 307 and bare.headers["location"] == "dashboard/"
        assert (await sign_in(http, TOKEN, prefix="/ci")).headers["location"] == "./"
        page = await http.get("/ci/dashboard/")
        assert page.status_code == 200 and 'href="./static/dashboard.css?v=' in page.text
        css = await http.get("/ci/dashboard/static/dashboard.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert (await http.get("/ci/dashboard/static/nope.js")).status_code == 404
        # a proxy that strips the prefix (Caddy handle_path) reaches the same pages
        assert (await http.get("/dashboard/")).status_code == 200
        link = await http.get("/ci/dashboard/r/orgs/acme/runs/1234")
        assert link.status_code == 303 and link.headers["location"] == "../../../../runs/1234"
