"""The web dashboard, served by the orchestrator itself in every mode under ``<KICI_BASE_PATH>/dashboard/``.

Server-rendered pages (Jinja2 templates in ``templates/``, one stylesheet and one script in ``static/``, all
shipped in the package) for runs, a run's job graph, live job logs, deliveries with their decision traces,
and agents with the queue. Sign-in exchanges an admin token for a session cookie (:mod:`.auth`); every page
reads through the admin API's stores and checks the admin API's permissions. Links are relative, so the
dashboard works under any base path and behind a proxy that strips it.

Modules: :mod:`.auth` (sessions, CSRF, security headers), :mod:`.pages` (request plumbing, sign-in),
:mod:`.handlers` (the pages), :mod:`.views` (pure view helpers), :mod:`.ansi` (terminal colours as text).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from kici_adapters.postgres.dashboard import PgDashboardReads, PgDashboardSessions
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.runs import PgRunStore
from kici_runtime.orchestrator.dashboard import auth, pages
from kici_runtime.orchestrator.dashboard.auth import Sessions
from kici_runtime.orchestrator.dashboard.handlers import Handlers
from kici_runtime.orchestrator.dispatcher import AgentHub

__all__ = ["routes"]

_STATIC = {f.name: f for f in pages.STATIC.iterdir() if f.is_file()}


async def _static(request: Request) -> Response:
    f = _STATIC.get(request.path_params["name"])
    if f is None:
        return auth.secure_headers(Response("Not found", status_code=404, media_type="text/plain"))
    kind = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
    response = Response(f.read_bytes(), media_type=kind)
    response.headers["cache-control"] = "public, max-age=86400"
    return auth.secure_headers(response, cache=True)


async def _to_root(request: Request) -> Response:
    return RedirectResponse("dashboard/", status_code=307)


def routes(
    hub: AgentHub, db: Database, *, runs: PgRunStore, secret_key: bytes | None, trusted_proxy: bool = False
) -> list[BaseRoute]:
    """Every dashboard route, under ``/dashboard`` (``runs``: the run store ``hub`` reports to); add them to
    ``build_app``'s ``extra_routes``."""
    sessions = Sessions(PgDashboardSessions(db), secret_key, trusted_proxy=trusted_proxy)
    h = Handlers(hub, sessions, PgDashboardReads(db), runs)
    login_page, login, logout = pages.login_routes(sessions)

    def page(handler: pages.Handler, *, stream: bool = False) -> Callable[[Request], Awaitable[Response]]:
        return pages.page(sessions, handler, stream=stream)

    d = "/dashboard"
    return [
        Route(d, _to_root, methods=["GET"]),
        Route(f"{d}/", page(h.runs), methods=["GET"]),
        Route(f"{d}/login", login_page, methods=["GET"]),
        Route(f"{d}/login", login, methods=["POST"]),
        Route(f"{d}/logout", logout, methods=["POST"]),
        Route(f"{d}/static/{{name}}", _static, methods=["GET"]),
        Route(f"{d}/runs/{{run_id}}", page(h.run), methods=["GET"]),
        Route(f"{d}/runs/{{run_id}}/cancel", page(h.cancel), methods=["POST"]),
        Route(f"{d}/runs/{{run_id}}/rerun", page(h.rerun), methods=["POST"]),
        Route(f"{d}/runs/{{run_id}}/jobs/{{job_id}}", page(h.job), methods=["GET"]),
        Route(f"{d}/runs/{{run_id}}/jobs/{{job_id}}/log.txt", page(h.raw), methods=["GET"]),
        Route(f"{d}/runs/{{run_id}}/jobs/{{job_id}}/stream", page(h.stream, stream=True), methods=["GET"]),
        Route(f"{d}/deliveries", page(h.deliveries), methods=["GET"]),
        Route(f"{d}/delivery", page(h.delivery), methods=["GET"]),
        Route(f"{d}/delivery/replay", page(h.replay), methods=["POST"]),
        Route(f"{d}/agents", page(h.agents), methods=["GET"]),
        Route(f"{d}/r/orgs/{{org_id}}/runs/{{run_id}}", h.details, methods=["GET"]),
    ]
