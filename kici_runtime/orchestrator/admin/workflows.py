"""Admin API for registered workflows: schedules, registrations and manual runs.

* ``GET /api/v1/admin/schedules``: every registered ``schedule`` trigger with its next and last fire;
* ``GET /api/v1/admin/registrations``: the workflows registered from default-branch pushes;
* ``POST /api/v1/admin/runs/dispatch``: run a workflow by hand through its ``dispatch`` trigger, with typed
  inputs. The lock file is read at the requested ref and the inputs checked against the trigger's descriptors
  before anything is accepted: a bad request is answered 400 with one entry per problem, each naming its path
  (``["inputs", "count"]``). An accepted request is a delivery like a webhook (event ``dispatch``, source
  ``internal``), processed by the ordinary pipeline; the answer (202) carries the id the run will have.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kici_adapters.postgres.registrations import PgRegistrations
from kici_core import errors, inputs, internal_events, registrations
from kici_core.jsontypes import JSONValue
from kici_core.pipeline import Pipeline
from kici_core.ports import DeliveryInbox, SourceStore
from kici_core.registration_records import Schedule
from kici_core.source_records import GenericSource, GitHubSource, RepoSource
from kici_runtime.orchestrator.admin import auth as admin_auth
from kici_runtime.orchestrator.admin import bodies
from kici_runtime.orchestrator.admin.auth import Caller
from kici_runtime.orchestrator.context import AppContext

__all__ = ["routes"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def schedule_json(s: Schedule) -> dict[str, JSONValue]:
    """One schedule as the API shows it."""
    return {
        "id": s.id,
        "registrationId": s.registration_id,
        "routingKey": s.routing_key,
        "repo": s.repo_identifier,
        "workflow": s.workflow_name,
        "triggerIndex": s.trigger_index,
        "cronExpression": s.cron_expression,
        "timezone": s.timezone,
        "description": s.description,
        "nextFireAt": _iso(s.next_fire_at),
        "lastFireAt": _iso(s.last_fire_at),
        "lastDeliveryId": s.last_delivery_id,
        "error": s.error,
    }


async def resolve_source(sources: SourceStore, value: str) -> tuple[RepoSource, str]:
    """The source named by a routing key (``github:<appId>``, ``generic:<org>:<id>``), a GitHub App id, or a
    generic/local source id or name; with its provider (``github`` or ``local``).

    Raises:
        NotFound: no such source.
        InvalidInput: a generic source that is not ``local`` (it names no repository to read).
    """
    found: RepoSource | None = None
    if value.startswith("github:"):
        found = await sources.github_by_routing_key(value)
    elif value.startswith("generic:"):
        found = await sources.generic_by_id(value.rsplit(":", 1)[-1])
    else:
        found = await sources.github_by_routing_key(f"github:{value}")
        if found is None:
            found = await sources.generic_by_id(value) if _is_uuid(value) else None
        if found is None:
            found = next((g for g in await sources.list_generic() if g.name == value), None)
    if found is None or (isinstance(found, GenericSource) and found.deleted_at is not None):
        raise errors.NotFound(f"no source {value!r}")
    if isinstance(found, GitHubSource):
        return found, "github"
    if found.provider_type != "local":
        raise admin_auth.validation(
            [
                {
                    "path": ["source"],
                    "message": "a generic webhook source names no repository: use a GitHub App or a local source",
                }
            ]
        )
    return found, "local"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def routes(
    *, store: PgRegistrations, pipeline: Pipeline, inbox: DeliveryInbox, wake: Callable[[], None]
) -> list[BaseRoute]:
    """The routes, bound to the registration store, the pipeline (lock-file reads) and the inbox."""

    async def list_schedules(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        rows = await store.list_schedules(routing_key=caller.token.routing_key)
        return JSONResponse({"schedules": [schedule_json(s) for s in rows]})

    async def list_registrations(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("run.read")
        rows = await store.list_registrations(routing_key=caller.token.routing_key)
        return JSONResponse(
            {
                "registrations": [
                    {
                        "id": r.id,
                        "routingKey": r.routing_key,
                        "repo": r.repo_identifier,
                        "workflow": r.workflow_name,
                        "ref": r.ref,
                        "sha": r.sha,
                        "triggerTypes": list(r.trigger_types),
                        "deliveryId": r.delivery_id,
                    }
                    for r in rows
                ]
            }
        )

    async def dispatch(request: Request, ctx: AppContext, caller: Caller) -> Response:
        caller.require("scheduled_job.trigger")
        body = bodies.parse(bodies.WorkflowDispatchBody, await admin_auth.json_body(request))
        source_name, repo, workflow, ref, kind, given = (
            body.source,
            body.repo,
            body.workflow,
            body.ref,
            body.type,
            body.inputs,
        )
        source, provider = await resolve_source(ctx.sources, source_name)
        caller.require_key(source.routing_key)
        try:
            plan = await internal_events.prepare_dispatch(
                pipeline,
                provider_name=provider,
                source=source,
                repo=repo,
                ref=ref,
                workflow_name=workflow,
                dispatch_type=kind,
                given=given,
            )
        except inputs.InputErrors as exc:
            raise admin_auth.validation([{"path": list(e.path), "message": e.message} for e in exc.errors]) from None
        except errors.LockfileError as exc:
            raise admin_auth.validation(
                [{"path": ["ref"], "message": f"the lock file at {ref} is invalid: {exc.message}"}]
            ) from None
        except errors.InvalidInput as exc:
            raise admin_auth.validation([{"path": ["workflow"], "message": exc.message}]) from None
        org_id = source.org_id if isinstance(source, GenericSource) else source.customer_id
        run_id, delivery_id = ctx.ids(), f"dispatch:{ctx.ids()}"
        delivery = registrations.dispatch_delivery(
            org_id=org_id[:16],
            delivery_id=delivery_id,
            routing_key=source.routing_key,
            provider=provider,
            repo=repo,
            ref=ref,
            workflow_name=workflow,
            dispatch_type=plan.dispatch_type,
            inputs=plan.inputs,
            run_id=run_id,
            requested_by=f"admin:{caller.token.label}",
            received_at=ctx.clock.now(),
        )
        await inbox.accept(delivery)
        wake()
        return JSONResponse(
            {
                "runId": run_id,
                "deliveryId": delivery_id,
                "repo": repo,
                "workflow": workflow,
                "ref": ref,
                "type": plan.dispatch_type,
                "inputs": plan.inputs,
            },
            status_code=202,
        )

    return [
        Route("/api/v1/admin/schedules", admin_auth.endpoint(list_schedules), methods=["GET"]),
        Route("/api/v1/admin/registrations", admin_auth.endpoint(list_registrations), methods=["GET"]),
        Route("/api/v1/admin/runs/dispatch", admin_auth.endpoint(dispatch), methods=["POST"]),
    ]
