"""The dashboard pages: runs, a run, a job's log (page, live stream, raw download), deliveries, a delivery,
agents and queue. Every read goes through the admin API's stores and checks (``run.read``,
``event_log.read``, routing-key scopes); actions need the admin API's permissions too."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from kici_adapters.postgres.dashboard import PgDashboardReads
from kici_adapters.postgres.reruns import PgReruns
from kici_adapters.postgres.runs import PgRunStore
from kici_core import errors
from kici_core.delivery_records import EventLogEntry, EventLogQuery
from kici_runtime.orchestrator.admin import auth as admin_auth
from kici_runtime.orchestrator.admin import runs as admin_runs
from kici_runtime.orchestrator.dashboard import ansi, auth, views
from kici_runtime.orchestrator.dashboard.auth import Sessions
from kici_runtime.orchestrator.dashboard.pages import Page, sub_path
from kici_runtime.orchestrator.dispatcher import AgentHub

PAGE_SIZE = 50
LOG_PAGE = 1000
STREAM_POLL = 0.5
STREAM_KEEPALIVE = 15.0
STREAM_RECHECK = 10.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _offset(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() and len(raw) < 10 else 0


class Handlers:
    """Page handlers bound to this process's agent hub and the dashboard's stores."""

    def __init__(self, hub: AgentHub, sessions: Sessions, reads: PgDashboardReads, runs: PgRunStore) -> None:
        self.hub = hub
        self.run_store = runs
        self.sessions = sessions
        self.reads = reads
        self.reruns = PgReruns(runs)

    # -------------------------------------------------------------------------------------------- runs
    async def runs(self, p: Page) -> Response:
        p.caller.require("run.read")
        q = p.request.query_params
        filters = {
            name: (q.get(name) or "").strip()[:200] for name in ("repo", "branch", "workflow", "status", "source")
        }
        status = filters["status"] if filters["status"] in views.RUN_STATUSES else ""
        offset = _offset(q.get("offset"))
        routing_key = p.caller.token.routing_key or filters["source"] or None
        rows, total = await self.run_store.list_runs(
            statuses=[status] if status else [],
            workflow=filters["workflow"] or None,
            repo=filters["repo"] or None,
            routing_key=routing_key,
            branch=filters["branch"] or None,
            limit=PAGE_SIZE,
            offset=offset,
        )
        query = urlencode({k: v for k, v in filters.items() if v})
        return p.render(
            "runs.html",
            runs=rows,
            total=total,
            offset=offset,
            limit=PAGE_SIZE,
            filters=filters,
            statuses=views.RUN_STATUSES,
            query=query,
        )

    async def _run(self, p: Page, run_id: str) -> dict[str, Any]:
        run = await self.run_store.get_run(run_id)
        if run is None:
            raise errors.NotFound(f"Run {run_id} not found")
        p.caller.require_key(run.get("routing_key"))
        return run

    async def run(self, p: Page) -> Response:
        p.caller.require("run.read")
        run = await self._run(p, p.request.path_params["run_id"])
        jobs = await self.run_store.list_jobs(str(run["run_id"]), include_steps=True)
        for job in jobs:
            job["waiting_reason"] = admin_runs.waiting_reason(self.hub, job)
        active = run["status"] in ("pending", "running", "cancelling", "held")
        return p.render(
            "run.html",
            run=run,
            jobs=jobs,
            graph=views.job_graph(jobs),
            active=active,
            can_cancel=active and p.can("run.cancel"),
            can_rerun=not active and p.can("run.cancel"),
            failed=views.FAILED_JOB,
            cancelled=p.request.query_params.get("cancelled"),
            rerun_of=p.request.query_params.get("rerun_of"),
        )

    async def cancel(self, p: Page) -> Response:
        await p.form()
        p.caller.require("run.cancel")
        run = await self._run(p, p.request.path_params["run_id"])
        run_id = str(run["run_id"])
        try:
            await self.hub.cancel_run(run_id, cancelled_by=f"dashboard:{p.caller.token.label}")
        except errors.Conflict:
            pass  # already finished: the page shows its final state
        return p.redirect(f"runs/{run_id}?cancelled=1")

    async def rerun(self, p: Page) -> Response:
        """The next attempt of a finished run (all jobs, or only the failed ones and what needs them)."""
        values = await p.form()
        p.caller.require("run.cancel")  # the admin API's permission for re-runs
        run = await self._run(p, p.request.path_params["run_id"])
        try:
            result = await self.reruns.rerun(
                str(run["run_id"]),
                failed_only=values.get("failed_only") == "1",
                requested_by=f"dashboard:{p.caller.token.label}",
            )
        except errors.Conflict as exc:
            raise admin_auth.fail(409, f"Cannot re-run: {exc.message}") from None
        return p.redirect(f"runs/{quote(result.run_id, safe='')}?rerun_of={quote(str(run['run_id']), safe='')}")

    async def details(self, request: Request) -> Response:
        """``KICI_DASHBOARD_URL``-based check-run links: ``<url>/r/orgs/<org>/runs/<run>`` -> the run page."""
        run_id = request.path_params["run_id"]
        return auth.secure_headers(
            RedirectResponse(f"{views.root(sub_path(request))}runs/{quote(run_id, safe='')}", status_code=303)
        )

    # -------------------------------------------------------------------------------------------- logs
    async def _job(self, p: Page) -> tuple[dict[str, Any], dict[str, Any]]:
        p.caller.require("run.read")
        run = await self._run(p, p.request.path_params["run_id"])
        job_id = p.request.path_params["job_id"]
        jobs = await self.run_store.list_jobs(str(run["run_id"]), include_steps=True)
        job = next((j for j in jobs if str(j["job_id"]) == job_id), None)
        if job is None:
            raise errors.NotFound(f"Job {job_id} not found in run {run['run_id']}")
        return run, job

    async def _chunks(self, run_id: str, job_name: str, after: int = 0) -> AsyncIterator[list[dict[str, Any]]]:
        while True:
            chunks = await self.run_store.logs(run_id, job_name=job_name, after=after, limit=LOG_PAGE)
            if not chunks:
                return
            yield chunks
            if len(chunks) < LOG_PAGE:
                return
            after = int(chunks[-1]["id"])

    async def job(self, p: Page) -> Response:
        run, job = await self._job(p)
        chunks: list[dict[str, Any]] = []
        async for batch in self._chunks(str(run["run_id"]), str(job["job_name"])):
            chunks += batch
        steps = {int(s["step_index"]): s for s in job.get("steps", [])}
        sections, last_id = views.log_sections(chunks, steps)
        failed = job["status"] in views.FAILED_JOB
        return p.render(
            "job.html",
            run=run,
            job=job,
            sections=sections,
            last_id=last_id,
            line_count=sum(len(s.lines) for s in sections),
            failure=views.failure_line(sections) if failed else None,
            live=job["status"] not in views.TERMINAL_JOB,
            waiting_reason=admin_runs.waiting_reason(self.hub, job),
        )

    async def raw(self, p: Page) -> Response:
        run, job = await self._job(p)
        run_id, job_name = str(run["run_id"]), str(job["job_name"])

        async def body() -> AsyncIterator[bytes]:
            async for batch in self._chunks(run_id, job_name):
                yield "".join((c.get("content") or "") + "\n" for c in batch).encode()

        name = _SAFE_NAME.sub("_", job_name).strip("_") or "job"
        response = StreamingResponse(
            body(),
            media_type="text/plain; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}.log"'},
        )
        return auth.secure_headers(response)

    async def stream(self, p: Page) -> Response:
        """Server-sent events: ``chunk`` (id = the chunk id, so a reconnecting browser resumes after the last one
        it got: no gap, no duplicate) until the job has ended, then ``end``."""
        run, job = await self._job(p)
        run_id, job_name, job_id = str(run["run_id"]), str(job["job_name"]), str(job["job_id"])
        last = p.request.headers.get("last-event-id") or p.request.query_params.get("after") or "0"
        after = int(last) if last.isdigit() and len(last) < 19 else 0
        steps = {int(s["step_index"]): s for s in job.get("steps", [])}
        request = p.request

        async def events() -> AsyncIterator[str]:
            nonlocal after, steps
            yield "retry: 2000\n\n"
            idle = checked = anyio.current_time()
            while True:
                sent = False
                async for batch in self._chunks(run_id, job_name, after):
                    for c in batch:
                        index = -1 if c["step_index"] is None else int(c["step_index"])
                        if index >= 0 and index not in steps:
                            steps = {int(s["step_index"]): s for s in await self._steps(run_id, job_id)}
                        data = {
                            "step": index,
                            "title": views.step_title(index, steps),
                            "lines": [ansi.segments(line) for line in (c["content"] or "").split("\n")],
                        }
                        after = int(c["id"])
                        yield f"id: {after}\nevent: chunk\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                    sent = True
                now = anyio.current_time()
                if sent:
                    idle = now
                    continue
                if now - checked >= STREAM_RECHECK:  # signed out or token revoked: stop streaming
                    checked = now
                    if await self.sessions.current(request, now=datetime.now(UTC)) is None:
                        yield 'event: end\ndata: {"status":"signed-out"}\n\n'
                        return
                status = await self._job_status(run_id, job_id)
                if status in views.TERMINAL_JOB:
                    async for batch in self._chunks(run_id, job_name, after):  # what landed before the end
                        if batch:
                            break
                    else:
                        yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                        return
                    continue
                if now - idle >= STREAM_KEEPALIVE:
                    idle = now
                    yield ": keepalive\n\n"
                await anyio.sleep(STREAM_POLL)

        response = StreamingResponse(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})
        return auth.secure_headers(response)

    async def _steps(self, run_id: str, job_id: str) -> list[dict[str, Any]]:
        jobs = await self.run_store.list_jobs(run_id, include_steps=True)
        job = next((j for j in jobs if str(j["job_id"]) == job_id), None)
        return [] if job is None else list(job.get("steps", []))

    async def _job_status(self, run_id: str, job_id: str) -> str:
        jobs = await self.run_store.list_jobs(run_id)
        job = next((j for j in jobs if str(j["job_id"]) == job_id), None)
        return "cancelled" if job is None else str(job["status"])

    # -------------------------------------------------------------------------------------------- deliveries
    async def deliveries(self, p: Page) -> Response:
        p.caller.require("event_log.read")
        q = p.request.query_params
        filters = {name: (q.get(name) or "").strip()[:200] for name in ("org", "source", "event", "status", "delivery")}
        offset = _offset(q.get("offset"))
        query = EventLogQuery(
            org_id=filters["org"] or None,
            routing_key=p.caller.token.routing_key or filters["source"] or None,
            event=filters["event"] or None,
            status=filters["status"] if filters["status"] in views.DELIVERY_STATUSES else None,
            delivery_id_contains=filters["delivery"] or None,
            limit=PAGE_SIZE,
            offset=offset,
        )
        entries, total = await p.ctx.event_log.list(query)
        link = urlencode({k: v for k, v in filters.items() if v})
        return p.render(
            "deliveries.html",
            deliveries=entries,
            total=total,
            offset=offset,
            limit=PAGE_SIZE,
            filters=filters,
            statuses=views.DELIVERY_STATUSES,
            query=link,
        )

    async def _delivery(self, p: Page, org_id: str, delivery_id: str) -> EventLogEntry:
        if not org_id or not delivery_id:
            raise admin_auth.fail(400, "Which delivery? The link needs org and id.")
        entry = await p.ctx.event_log.get(org_id, delivery_id)
        if entry is None or (p.caller.scoped and entry.routing_key != p.caller.token.routing_key):
            raise errors.NotFound("Delivery not found")
        return entry

    async def delivery(self, p: Page) -> Response:
        p.caller.require("event_log.read")
        q = p.request.query_params
        entry = await self._delivery(p, q.get("org") or "", q.get("id") or "")
        runs: list[dict[str, Any]] = []
        if p.can("run.read"):
            rows, _ = await self.run_store.list_runs(
                routing_key=entry.routing_key, repo=entry.repo_identifier, since=entry.received_at, limit=100
            )
            runs = [r for r in rows if r.get("delivery_id") == entry.delivery_id and r.get("org_id") == entry.org_id]
        return p.render(
            "delivery.html",
            d=entry,
            trace=views.explain_trace(entry.decision_trace),
            status_text=views.STATUS_TEXT.get(entry.status, ""),
            runs=runs,
            can_replay=p.can("event_dlq.manage"),
            replayed=q.get("replayed"),
        )

    async def replay(self, p: Page) -> Response:
        values = await p.form()
        p.caller.require("event_dlq.manage")
        entry = await self._delivery(p, values.get("org", ""), values.get("id", ""))
        if not await p.ctx.inbox.replay(entry.org_id, entry.delivery_id):
            raise errors.NotFound("Delivery not found")
        p.ctx.wake_worker()
        return p.redirect(
            f"delivery?org={quote(entry.org_id, safe='')}&id={quote(entry.delivery_id, safe='')}&replayed=1"
        )

    # -------------------------------------------------------------------------------------------- agents
    async def agents(self, p: Page) -> Response:
        p.caller.require("run.read")
        key = p.caller.token.routing_key
        agents = await self.reads.agents(
            local=self.hub.core.agent_ids(), instance=self.hub.instance_id, routing_key=key
        )
        queued, total = await self.reads.queued(routing_key=key)
        for row in queued:
            row["waiting_reason"] = admin_runs.waiting_reason(self.hub, row)
        return p.render("agents.html", agents=agents, queued=queued, total=total, instance=self.hub.instance_id)
