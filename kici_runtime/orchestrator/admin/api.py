"""The admin API (``/api/v1/admin/...`` and ``/api/v1/agent-tokens``), mounted by ``build_app`` through
``extra_routes=admin_api.routes``.

What the routes need comes from :class:`~kici_runtime.orchestrator.context.AppContext`: ``tokens`` (admin and agent
tokens),
``secret_key_configured`` (False: every admin route answers 503), ``blobs`` (event-log payloads),
``rotate_key``, ``migrate`` and ``migration_status`` (see :func:`migration_status` below),
``github_app_check`` (``GET /app`` validation of a new GitHub source when the request asks for it with
``"verify": true``; see :func:`github_app_check`),
``kick_agent_token`` and ``webhook_public_url``.
"""

from __future__ import annotations

import httpx
from starlette.routing import BaseRoute

from kici_adapters.github import app as github_app
from kici_adapters.github import client as gh
from kici_adapters.postgres import migrate
from kici_core.jsontypes import JSONObject
from kici_runtime.orchestrator.admin import ops as admin_ops
from kici_runtime.orchestrator.admin import sources as admin_sources
from kici_runtime.orchestrator.admin.sources import iso
from kici_runtime.orchestrator.context import GitHubAppCheck

__all__ = ["github_app_check", "migration_status", "routes"]

routes: list[BaseRoute] = [*admin_sources.routes, *admin_ops.routes]
"""Every admin route; ``build_app(ctx, extra_routes=[*admin_api.routes, ...])``."""


async def migration_status(url: str) -> list[JSONObject]:
    """``[{name, status: "applied"|"pending", appliedAt}]`` for every shipped migration, in order.

    Raises:
        StorageUnavailable: the database cannot be reached.
    """
    return [
        {"name": m.name, "status": "pending" if m.applied_at is None else "applied", "appliedAt": iso(m.applied_at)}
        for m in await migrate.migration_states(url)
    ]


def github_app_check(http: httpx.AsyncClient, default_api_url: str = gh.DEFAULT_API_URL) -> GitHubAppCheck:
    """An ``AppContext.github_app_check``: ``GET /app`` with the App JWT; returns ``{"name", "slug"}``.

    One attempt, no retries: an operator waits for the answer (``source add github --verify``) and should hear
    at once that GitHub cannot be reached.
    """

    async def check(app_id: str, private_key: str, api_url: str | None) -> JSONObject:
        client = gh.GitHubClient(api_url=api_url or default_api_url, http=http, retry=gh.RetryPolicy(attempts=1))
        identity = await github_app.GitHubApp(app_id=app_id, private_key=private_key, client=client).identity()
        if str(identity.id) != app_id:
            raise gh.GitHubApiError(f"the private key belongs to App {identity.id}, not {app_id}")
        return {"name": identity.name, "slug": identity.slug}

    return check
