"""Cluster and retention routes: ``GET /cluster/health``, the admin API's cluster view and ``POST .../gc``.

* ``GET /cluster/health`` (no authentication, like ``/health``; always 200 while the database answers, 503 when it
  does not): every process sharing the database with its last heartbeat, which process last ran each singleton
  duty, agent and active-run counts (:func:`kici_core.cluster.health`).
* ``GET /api/v1/admin/cluster`` (``run.read``): the same, plus every connected agent with its process and load —
  what ``kici-admin cluster status`` prints; ``GET /api/v1/admin/cluster/agents`` is the agent list alone.
* ``POST /api/v1/admin/gc`` (``gc.run``; body ``{"dryRun": bool}``): a retention sweep now, or with ``dryRun``
  the counts one would remove; 409 while another process is sweeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kici_adapters.postgres import singletons
from kici_core import cluster, errors
from kici_core.jsontypes import JSONObject
from kici_core.ports import ClusterDirectory
from kici_runtime.orchestrator.admin import auth as admin_auth
from kici_runtime.orchestrator.admin import bodies
from kici_runtime.orchestrator.admin.auth import Caller
from kici_runtime.orchestrator.context import AppContext
from kici_runtime.orchestrator.retention import RetentionSweeper, report_json

__all__ = ["ClusterView", "routes"]

PREFIX = "/api/v1/admin"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    """What the routes read: the shared directory, this process's id and the liveness timeout."""

    directory: ClusterDirectory
    instance_id: str
    instance_timeout_s: float
    sweeper: RetentionSweeper | None = None

    async def health(self) -> JSONObject:
        """The ``/cluster/health`` body (see :func:`kici_core.cluster.health`)."""
        d = self.directory
        return cluster.health(
            me=self.instance_id,
            instances=await d.instances(),
            duties=await d.duties(),
            agents=await d.agents(),
            active_runs=await d.active_runs(),
            now=await d.now(),
            timeout=timedelta(seconds=self.instance_timeout_s),
            known_duties=singletons.DUTIES,
        )

    async def agents(self) -> list[JSONObject]:
        """Every agent connected to a live process, with its process and load (the dashboard reads this too)."""
        return [cluster.agent_view(a) for a in await self.directory.agents()]


def routes(view: ClusterView) -> list[BaseRoute]:
    """The cluster and gc routes, bound to ``view``."""

    async def cluster_health(request: Request) -> Response:
        try:
            return JSONResponse(await view.health())
        except errors.Unavailable:
            return JSONResponse(
                {"status": "unhealthy", "instanceId": view.instance_id, "error": "database unavailable"},
                status_code=503,
            )

    async def admin_cluster(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        return JSONResponse({**await view.health(), "agents": list(await view.agents())})

    async def admin_agents(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        return JSONResponse({"agents": list(await view.agents())})

    async def gc(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("gc.run")
        dry_run = bodies.parse(bodies.GcBody, await admin_auth.json_body(request)).dryRun
        if view.sweeper is None:
            return JSONResponse({"error": "retention is not available in this process"}, status_code=503)
        try:
            report = await view.sweeper.sweep_now(dry_run=dry_run)
        except errors.Conflict as exc:
            return JSONResponse({"error": exc.message}, status_code=409)
        return JSONResponse(report_json(report))

    return [
        Route("/cluster/health", cluster_health, methods=["GET"]),
        Route(PREFIX + "/cluster", admin_auth.endpoint(admin_cluster), methods=["GET"]),
        Route(PREFIX + "/cluster/agents", admin_auth.endpoint(admin_agents), methods=["GET"]),
        Route(PREFIX + "/gc", admin_auth.endpoint(gc), methods=["POST"]),
    ]
