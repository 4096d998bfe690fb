"""Admin API plumbing: bearer-token authentication, roles and permissions, routing-key scoping, error bodies.

Every admin endpoint is wrapped by :func:`endpoint`, which answers 503 when no master key is configured,
authenticates the bearer token (sha256 lookup in the TokenStore), checks the permission and the token's
routing-key scope, and turns errors into the admin API's JSON bodies. Secret values never reach a response
or a log line from here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kici_core import errors, jsontypes
from kici_core.ports import TokenStore
from kici_core.token_records import AdminToken
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.admin")

ALL_ROLES = ("owner", "admin", "auditor")
_OWNER_ADMIN = ("owner", "admin")

PERMISSIONS: dict[str, tuple[str, ...]] = {
    "context.create": _OWNER_ADMIN,
    "context.update": _OWNER_ADMIN,
    "context.delete": _OWNER_ADMIN,
    "context.read": ALL_ROLES,
    "secret.read": _OWNER_ADMIN,
    "secret.write": _OWNER_ADMIN,
    "secret.delete": _OWNER_ADMIN,
    "secret.reveal": _OWNER_ADMIN,
    "audit.read": ALL_ROLES,
    "run.read": ALL_ROLES,
    "event_log.read": ALL_ROLES,
    "access_log.read": ALL_ROLES,
    "event_dlq.read": ALL_ROLES,
    "run.cancel": _OWNER_ADMIN,
    "event_log.read_payload": _OWNER_ADMIN,
    "scheduled_job.trigger": _OWNER_ADMIN,
    "event_dlq.manage": _OWNER_ADMIN,
    "token.manage": ("owner",),
    "key.rotate": ("owner",),
    "gc.run": _OWNER_ADMIN,  # retention sweep now (kici-admin gc)
}
"""Permission -> the roles that hold it (operations spec §2.1)."""

SECRETS_DISABLED = "secrets subsystem disabled: set KICI_SECRET_KEY"
SCOPED_OTHER_KEY = "Access denied: token is restricted to a single routing key and this request targets a different one"
SCOPED_GLOBAL = (
    "Access denied: this route requires an unscoped admin token "
    "(the calling token is restricted to a single routing key)"
)


def has_permission(role: str, permission: str) -> bool:
    """True when ``role`` holds ``permission``; unknown permissions are held by nobody."""
    return role in PERMISSIONS.get(permission, ())


def token_hash(token: str) -> str:
    """Lower-case hex sha256 of the token text: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


class AdminHTTPError(Exception):
    """An admin API error with its HTTP status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


def fail(status: int, message: str, **extra: Any) -> AdminHTTPError:
    """An error answered as ``{"error": message, ...extra}``."""
    return AdminHTTPError(status, {"error": message, **extra})


def validation(details: list[dict[str, Any]]) -> AdminHTTPError:
    """400 ``{"error":"Validation error","details":[...]}``."""
    return AdminHTTPError(400, {"error": "Validation error", "details": details})


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """The authenticated admin token of a request."""

    token: AdminToken

    @property
    def scoped(self) -> bool:
        return self.token.routing_key is not None

    def require(self, permission: str) -> None:
        """Raise 403 unless the caller's role holds ``permission``."""
        if not has_permission(self.token.role, permission):
            raise fail(403, f'Role "{self.token.role}" does not have permission "{permission}"')

    def require_unscoped(self) -> None:
        """Raise 403 for routing-key-scoped tokens (global routes)."""
        if self.scoped:
            raise fail(403, SCOPED_GLOBAL)

    def require_key(self, routing_key: str | None) -> None:
        """Raise 403 when a scoped token targets another routing key."""
        if self.scoped and routing_key != self.token.routing_key:
            raise fail(403, SCOPED_OTHER_KEY)

    def may_see(self, routing_key: str | None) -> bool:
        """List filtering: scoped tokens see only their own key."""
        return not self.scoped or routing_key == self.token.routing_key


def tokens_of(ctx: AppContext) -> TokenStore:
    if ctx.tokens is None:
        raise fail(503, SECRETS_DISABLED)
    return ctx.tokens


async def authenticate(ctx: AppContext, request: Request) -> Caller:
    """The caller of ``request``; raises 401 with the spec's exact bodies."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise fail(401, "Missing authorization")
    token = await tokens_of(ctx).admin_token_by_hash(token_hash(value.strip()))
    if token is None:
        raise fail(401, "Invalid or expired token")
    return Caller(token=token)


Handler = Callable[[Request, AppContext, Caller], Awaitable[Response]]


def _error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, AdminHTTPError):
        return JSONResponse(exc.body, status_code=exc.status)
    if isinstance(exc, errors.NotFound):
        return JSONResponse({"error": exc.message}, status_code=404)
    if isinstance(exc, errors.Conflict):
        return JSONResponse({"error": "Conflict: resource already exists"}, status_code=409)
    if isinstance(exc, errors.InvalidInput):
        return JSONResponse({"error": exc.message}, status_code=400)
    if isinstance(exc, errors.Unavailable):
        log.warning("admin request failed: dependency unavailable", extra={"reason": str(exc)})
        return JSONResponse(
            {"error": "Service unavailable: storage is not reachable, retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, errors.SecretDecryptError):
        log.error("admin request failed: %s", exc.message)
        return JSONResponse({"error": exc.message}, status_code=500)
    log.exception("admin request failed")
    return JSONResponse({"error": "Internal server error"}, status_code=500)


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an admin handler with the 503 key check, authentication and error mapping."""

    async def run(request: Request) -> Response:
        ctx: AppContext = request.app.state.ctx
        try:
            if not ctx.secret_key_configured:
                raise fail(503, SECRETS_DISABLED)
            caller = await authenticate(ctx, request)
            return await handler(request, ctx, caller)
        except Exception as exc:  # every failure becomes one JSON body, never a traceback
            return _error_response(exc)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; 400 validation error when it is not one (also for JSON nested deeper than
    :data:`~kici_core.jsontypes.MAX_DEPTH`, ``NaN``/``Infinity`` and NUL characters, which no field accepts).
    The body size and read time are bounded by :class:`~kici_runtime.orchestrator.httpguard.RequestGuard`."""
    raw = await request.body()
    if not raw.strip():
        return {}
    if b"\\u0000" in raw or b"\x00" in raw:
        raise validation([{"path": [], "message": "body must not contain NUL characters"}])
    try:
        value = jsontypes.loads(raw)
    except jsontypes.JSONTooDeep as exc:
        raise validation([{"path": [], "message": str(exc)}]) from None
    except ValueError:
        raise validation([{"path": [], "message": "body is not valid JSON"}]) from None
    if not isinstance(value, dict):
        raise validation([{"path": [], "message": "body must be a JSON object"}])
    return value
