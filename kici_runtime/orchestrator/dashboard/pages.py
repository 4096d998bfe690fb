"""The dashboard's request plumbing: the page wrapper (session, role checks, errors, security headers),
template rendering, form parsing, sign-in and sign-out."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from kici_adapters.postgres.dashboard import DashboardSession
from kici_core import errors
from kici_runtime.orchestrator.admin import auth as admin_auth
from kici_runtime.orchestrator.admin.auth import AdminHTTPError, Caller
from kici_runtime.orchestrator.context import AppContext
from kici_runtime.orchestrator.dashboard import auth, views
from kici_runtime.orchestrator.dashboard.auth import Sessions

log = logging.getLogger("kici.dashboard")

HERE = Path(__file__).parent
STATIC = HERE / "static"
MAX_FORM_BYTES = 16_384
_NEXT = re.compile(r"^(?!/)(?!.*\.\.)[A-Za-z0-9_\-./?=&%:~+]{0,500}$")

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(when=views.when, iso=views.iso, duration=views.duration, q=lambda v: quote(str(v), safe=""))
templates.globals.update(duration=views.duration)


def sub_path(request: Request) -> str:
    """The request path below ``/dashboard/`` (``runs/<id>`` ...), whatever prefix it arrived with."""
    path = str(request.scope["path"])[len(str(request.scope.get("root_path", ""))) :]
    return path.removeprefix("/dashboard").lstrip("/")


def static_version() -> str:
    """Changes whenever a static file changes (cache busting for ``?v=``)."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(STATIC.iterdir()):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


STATIC_VERSION = static_version()


@dataclass(slots=True)
class Page:
    """One authenticated dashboard request."""

    request: Request
    ctx: AppContext
    session: DashboardSession
    caller: Caller
    root: str
    now: datetime

    def can(self, permission: str) -> bool:
        return admin_auth.has_permission(self.caller.token.role, permission)

    def render(self, template: str, *, status: int = 200, **values: Any) -> Response:
        return render(
            self.request,
            template,
            status=status,
            root=self.root,
            session=self.session,
            caller=self.caller,
            now=self.now,
            **values,
        )

    def redirect(self, to: str) -> Response:
        """303 to a path relative to the dashboard root."""
        return auth.secure_headers(RedirectResponse(self.root + to, status_code=303))

    async def form(self) -> dict[str, str]:
        """The urlencoded body; checks the CSRF token (403 when it is missing or wrong)."""
        values = await read_form(self.request)
        auth.check_csrf(self.session, self.request, values.get("csrf", ""))
        return values


def render(request: Request, template: str, *, status: int = 200, root: str, **values: Any) -> Response:
    html = templates.get_template(template).render(
        root=root, static_version=STATIC_VERSION, path=sub_path(request), **values
    )
    return auth.secure_headers(HTMLResponse(html, status_code=status))


async def read_form(request: Request) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body as a dict (first value of each field)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise admin_auth.fail(413, "The form is too large.")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise admin_auth.fail(400, "The form could not be read.") from None
    return {k: v[0] for k, v in parsed.items()}


def error_page(request: Request, status: int, message: str, *, session: DashboardSession | None = None) -> Response:
    return render(
        request,
        "error.html",
        status=status,
        root=views.root(sub_path(request)),
        session=session,
        caller=None if session is None else Caller(token=session.token),
        code=status,
        message=message,
    )


def _error(request: Request, exc: BaseException, session: DashboardSession | None) -> Response:
    if isinstance(exc, AdminHTTPError):
        return error_page(request, exc.status, str(exc.body.get("error")), session=session)
    if isinstance(exc, errors.NotFound):
        return error_page(request, 404, exc.message, session=session)
    if isinstance(exc, errors.InvalidInput):
        return error_page(request, 400, exc.message, session=session)
    if isinstance(exc, errors.Unavailable):
        log.warning("dashboard request failed: storage unavailable", extra={"reason": str(exc)})
        return error_page(request, 503, "The database is not reachable; retry in a moment.", session=session)
    log.exception("dashboard request failed")
    return error_page(request, 500, "Internal server error", session=session)


Handler = Callable[[Page], Awaitable[Response]]


def page(sessions: Sessions, handler: Handler, *, stream: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: find the session (else send the browser to sign in), map errors to pages."""

    async def run(request: Request) -> Response:
        ctx: AppContext = request.app.state.ctx
        session: DashboardSession | None = None
        try:
            now = datetime.now(UTC)
            if sessions.enabled:
                session = await sessions.current(request, now=now)
            if session is None:
                if stream or request.method != "GET":
                    return auth.secure_headers(Response("Sign in first.", status_code=401, media_type="text/plain"))
                sub = sub_path(request)
                query = request.url.query
                nxt = quote(sub + (f"?{query}" if query else ""), safe="")
                return auth.secure_headers(RedirectResponse(f"{views.root(sub)}login?next={nxt}", status_code=303))
            return await handler(
                Page(
                    request=request,
                    ctx=ctx,
                    session=session,
                    caller=Caller(token=session.token),
                    root=views.root(sub_path(request)),
                    now=now,
                )
            )
        except Exception as exc:  # every failure becomes a page, never a traceback
            return _error(request, exc, session)

    run.__name__ = handler.__name__
    return run


def safe_next(value: str | None) -> str:
    """A post-sign-in destination: a path below the dashboard root, nothing else."""
    return value if value and _NEXT.match(value) else ""


def login_routes(sessions: Sessions) -> tuple[Callable[[Request], Awaitable[Response]], ...]:
    """GET and POST ``login``, POST ``logout``."""

    def form(request: Request, *, status: int = 200, error: str | None = None, nxt: str = "") -> Response:
        nonce = secrets.token_urlsafe(24)
        response = render(
            request,
            "login.html",
            status=status,
            root=views.root(sub_path(request)),
            session=None,
            caller=None,
            error=error,
            next=nxt,
            nonce=nonce,
        )
        sessions.set_login_cookie(request, response, nonce)
        return response

    async def login_page(request: Request) -> Response:
        if not sessions.enabled:
            return error_page(request, 503, admin_auth.SECRETS_DISABLED)
        nxt = safe_next(request.query_params.get("next"))
        try:
            if await sessions.current(request, now=datetime.now(UTC)) is not None:
                return auth.secure_headers(RedirectResponse("./" + nxt, status_code=303))
        except errors.Unavailable:
            return error_page(request, 503, "The database is not reachable; retry in a moment.")
        return form(request, nxt=nxt)

    async def login(request: Request) -> Response:
        ctx: AppContext = request.app.state.ctx
        if not sessions.enabled:
            return error_page(request, 503, admin_auth.SECRETS_DISABLED)
        try:
            values = await read_form(request)
            nxt = safe_next(values.get("next"))
            if not auth.same_origin(request) or not auth.check_login_nonce(request, values.get("nonce", "")):
                return form(
                    request,
                    status=403,
                    nxt=nxt,
                    error="The sign-in form expired or did not come from this dashboard. Try again.",
                )
            text = values.get("token", "").strip()
            token = None
            if text and len(text) <= 512:
                token = await admin_auth.tokens_of(ctx).admin_token_by_hash(admin_auth.token_hash(text))
            if token is None:
                log.info("Dashboard sign-in refused: invalid or expired token")
                return form(request, status=401, nxt=nxt, error="Invalid or expired token.")
            cookie = await sessions.start(token.id, now=datetime.now(UTC))
        except Exception as exc:
            return _error(request, exc, None)
        log.info("Dashboard sign-in", extra={"tokenId": token.id, "role": token.role})
        response = auth.secure_headers(RedirectResponse("./" + nxt, status_code=303))
        sessions.set_cookie(request, response, cookie)
        response.delete_cookie(auth.LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        try:
            session = await sessions.current(request, now=datetime.now(UTC)) if sessions.enabled else None
            if session is not None:
                auth.check_csrf(session, request, (await read_form(request)).get("csrf", ""))
                await sessions.end(request)
                log.info("Dashboard sign-out", extra={"tokenId": session.token.id})
        except Exception as exc:
            return _error(request, exc, None)
        response = auth.secure_headers(RedirectResponse(views.root(sub_path(request)) + "login", status_code=303))
        sessions.clear_cookie(request, response)
        return response

    return login_page, login, logout
