"""Dashboard sign-in, sessions, CSRF checks and the security headers of every dashboard response.

Signing in exchanges an admin token (checked exactly as the admin API checks a bearer token) for a session
cookie ``kici_session`` = ``<session id>.<HMAC-SHA256 of it>``: HttpOnly, SameSite=Strict, Secure when the
request came over TLS, expiring after :data:`SESSION_TTL`. The signing key is derived from
``KICI_SECRET_KEY``; the database keeps only the sha256 of the session id. Signing out deletes the session.
A session acts with its token's role and routing-key scope (:class:`~kici_runtime.orchestrator.admin.auth.Caller`), so
the dashboard allows exactly what the admin API allows that token.

Every state-changing request (a POST) must carry the session's CSRF token in the form, and its ``Origin``
(when the browser sends one) must be this host. The sign-in form, made before there is a session, carries a
random value that must match the short-lived ``kici_login`` cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from kici_adapters.postgres.dashboard import DashboardSession, PgDashboardSessions
from kici_runtime.orchestrator.admin import auth as admin_auth

__all__ = ["CSP", "SESSION_COOKIE", "SESSION_TTL", "Sessions", "secure_headers"]

SESSION_COOKIE = "kici_session"
LOGIN_COOKIE = "kici_login"
SESSION_TTL = timedelta(hours=12)
LOGIN_TTL_SECONDS = 600

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No inline script or style, nothing from another origin, no framing."""

_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def secure_headers(response: Response, *, cache: bool = False) -> Response:
    """Add the dashboard's security headers (and ``Cache-Control: no-store`` unless ``cache``)."""
    for name, value in _HEADERS.items():
        response.headers[name] = value
    if not cache:
        response.headers["cache-control"] = "no-store"
    return response


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def is_tls(request: Request, *, trusted_proxy: bool) -> bool:
    """The browser reached us over TLS (directly, or through a trusted proxy saying so)."""
    if request.url.scheme in ("https", "wss"):
        return True
    return trusted_proxy and request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin``, else ``Referer``)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # older browsers and non-browser clients; the CSRF token still has to match
    if origin == "null":
        return False
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
    return urlsplit(origin).netloc.lower() == host.split(",")[0].strip().lower()


class Sessions:
    """Creates, verifies and ends dashboard sessions.

    Args:
        store: the session table.
        secret_key: ``KICI_SECRET_KEY`` (None: sign-in is refused, as the admin API is without a key).
        trusted_proxy: believe ``X-Forwarded-Proto`` when deciding on the ``Secure`` attribute.
    """

    def __init__(self, store: PgDashboardSessions, secret_key: bytes | None, *, trusted_proxy: bool = False) -> None:
        self.store = store
        self._key = (
            None if secret_key is None else hmac.new(secret_key, b"kici dashboard session v1", hashlib.sha256).digest()
        )
        self.trusted_proxy = trusted_proxy

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _sign(self, value: str) -> str:
        assert self._key is not None
        return _b64(hmac.new(self._key, value.encode(), hashlib.sha256).digest())

    def _unsigned(self, cookie: str | None) -> str | None:
        """The session id of a correctly signed cookie value."""
        if not cookie or self._key is None or cookie.count(".") != 1:
            return None
        sid, sig = cookie.split(".")
        return sid if sid and hmac.compare_digest(sig, self._sign(sid)) else None

    @staticmethod
    def _hash(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    async def start(self, token_id: str, *, now: datetime) -> str:
        """A new session for ``token_id``; returns the cookie value."""
        sid = secrets.token_urlsafe(32)
        await self.store.create(
            self._hash(sid),
            token_id=token_id,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=now + SESSION_TTL,
            now=now,
        )
        return f"{sid}.{self._sign(sid)}"

    async def current(self, request: Request, *, now: datetime) -> DashboardSession | None:
        """The request's live session, or None."""
        sid = self._unsigned(request.cookies.get(SESSION_COOKIE))
        if sid is None:
            return None
        return await self.store.lookup(self._hash(sid), now=now)

    async def end(self, request: Request) -> None:
        """Sign out: the session stops working at once, wherever its cookie went."""
        sid = self._unsigned(request.cookies.get(SESSION_COOKIE))
        if sid is not None:
            await self.store.delete(self._hash(sid))

    def set_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=int(SESSION_TTL.total_seconds()),
            path="/",
            httponly=True,
            samesite="strict",
            secure=is_tls(request, trusted_proxy=self.trusted_proxy),
        )

    def clear_cookie(self, request: Request, response: Response) -> None:
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=is_tls(request, trusted_proxy=self.trusted_proxy),
        )

    def set_login_cookie(self, request: Request, response: Response, nonce: str) -> None:
        """The ``kici_login`` cookie the sign-in form's ``nonce`` field must match."""
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=LOGIN_TTL_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=is_tls(request, trusted_proxy=self.trusted_proxy),
        )


def check_login_nonce(request: Request, submitted: str) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode())


def check_csrf(session: DashboardSession, request: Request, submitted: str) -> None:
    """Raise 403 unless the form's CSRF token is the session's and the request is same-origin."""
    if not same_origin(request) or not hmac.compare_digest(session.csrf_token.encode(), submitted.encode()):
        raise admin_auth.fail(
            403, "The form has expired or did not come from this dashboard: reload the page and try again."
        )
