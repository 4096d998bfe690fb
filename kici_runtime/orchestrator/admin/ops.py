"""Admin API: event log (list, show, replay), admin tokens, agent tokens, key rotation, migrations.

Tokens are 32 random bytes: admin tokens as 64 hex characters, agent tokens as ``kat_`` + 64 hex. Only their
sha256 is stored; the plaintext is in the create response and nowhere else.
"""

from __future__ import annotations

import logging
import secrets as pysecrets
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kici_core import errors, jsontypes
from kici_core.delivery_records import EventLogEntry, EventLogQuery
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.token_records import AdminToken, AgentToken
from kici_runtime.orchestrator.admin import bodies
from kici_runtime.orchestrator.admin.auth import (
    Caller,
    endpoint,
    fail,
    json_body,
    token_hash,
    tokens_of,
)
from kici_runtime.orchestrator.admin.sources import iso
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.admin")

AGENT_TOKEN_PREFIX = "kat_"
AGENT_PREFIX_SHOWN = 12  # "kat_" + 8 hex
EVENT_LOG_MAX_LIMIT = 200
MAX_ORGS_NAMED = 20  # an ambiguous delivery id names at most this many orgs


def new_admin_token() -> str:
    """64 lower-case hex characters (32 random bytes)."""
    return pysecrets.token_hex(32)


def new_agent_token() -> str:
    """``kat_`` + 64 lower-case hex characters."""
    return AGENT_TOKEN_PREFIX + pysecrets.token_hex(32)


# ------------------------------------------------------------------------------------------ event log
def entry_json(e: EventLogEntry) -> dict[str, JSONValue]:
    """The admin API form of an event-log row (webhooks spec §4.6) plus the decision trace."""
    return {
        "orgId": e.org_id,
        "deliveryId": e.delivery_id,
        "routingKey": e.routing_key,
        "event": e.event,
        "action": e.action,
        "source": e.source,
        "provider": e.provider,
        "repoIdentifier": e.repo_identifier,
        "ref": e.ref,
        "status": e.status,
        "matchedCount": e.matched_count,
        "runId": e.run_id,
        "errorMessage": e.error_message,
        "receivedAt": iso(e.received_at),
        "archivedAt": None,
        "payloadOmitted": e.payload_omitted,
        "payloadOmittedReason": e.payload_omitted_reason,
        "payloadSizeBytes": e.payload_size_bytes,
        "payloadHash": e.payload_hash,
        "attempts": e.attempts,
        "decisionTrace": e.decision_trace,
    }


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise fail(400, f"Invalid {name}: expected an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        raise fail(400, f"Invalid {name}: the timestamp needs a timezone (e.g. Z)")
    return parsed


def _int(value: str | None, name: str, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise fail(400, f"Invalid {name}: expected a non-negative integer")
    return min(int(value), maximum)


async def list_event_log(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/event-log"""
    caller.require("event_log.read")
    q = request.query_params
    routing_key = q.get("routingKey") or None
    if caller.scoped:
        routing_key = caller.token.routing_key  # a scoped token is forced onto its own key
    query = EventLogQuery(
        org_id=q.get("orgId") or None,
        routing_key=routing_key,
        event=q.get("event") or None,
        action=q.get("action") or None,
        status=q.get("status") or None,
        since=_when(q.get("from") or q.get("since"), "from"),
        until=_when(q.get("to"), "to"),
        delivery_id_contains=q.get("deliveryId") or None,
        limit=_int(q.get("limit"), "limit", 50, EVENT_LOG_MAX_LIMIT) or 1,
        offset=_int(q.get("offset"), "offset", 0, 2**31 - 1),
    )
    entries, total = await ctx.event_log.list(query)
    return JSONResponse(
        {"deliveries": [entry_json(e) for e in entries], "total": total, "limit": query.limit, "offset": query.offset}
    )


async def _entry(request: Request, ctx: AppContext, caller: Caller) -> EventLogEntry:
    """The delivery named by the path, in ``orgId`` when given; without it, in the one org that holds the id
    (409 naming the orgs when several do)."""
    org_id = request.query_params.get("orgId") or None
    delivery_id = request.path_params["delivery_id"]
    wanted_key = request.query_params.get("routingKey") or None
    if org_id is not None:
        entry = await ctx.event_log.get(org_id, delivery_id)
    else:
        found, total = await ctx.event_log.list(
            EventLogQuery(
                delivery_id=delivery_id,
                routing_key=caller.token.routing_key if caller.scoped else wanted_key,
                limit=MAX_ORGS_NAMED,
            )
        )
        orgs = sorted({e.org_id for e in found})  # (org, delivery id) is unique: one entry per org
        if total > 1:
            more = ", ..." if total > len(orgs) else ""
            raise fail(
                409,
                f"Delivery {delivery_id} exists in {total} orgs ({', '.join(orgs)}{more}): name one with orgId",
                orgIds=orgs,
            )
        entry = found[0] if found else None
    if entry is None or (wanted_key and entry.routing_key != wanted_key):
        raise fail(404, "Delivery not found")
    if caller.scoped and entry.routing_key != caller.token.routing_key:
        raise fail(404, "Delivery not found")  # do not reveal deliveries of other keys
    return entry


async def show_event_log(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/event-log/{delivery_id}?orgId=&includePayload=&routingKey= (``orgId`` optional)"""
    caller.require("event_log.read")
    include_payload = request.query_params.get("includePayload") == "true"
    if include_payload:
        caller.require("event_log.read_payload")
    entry = await _entry(request, ctx, caller)
    out = entry_json(entry)
    if include_payload and not entry.payload_omitted and entry.payload_key:
        try:
            # the database copy until the offloader has moved it, then the object
            body = await ctx.event_log.payload(entry.org_id, entry.delivery_id)
            if body is None:
                raise errors.NotFound("payload not stored")
            # stored bodies are shown as standard JSON: NaN/Infinity from a sender become strings
            payload: JSONValue = jsontypes.loads_lenient(body)
            out["payload"] = payload
        except (errors.KiciError, OSError, ValueError, EOFError) as exc:
            log.warning(
                "cannot read an event-log payload",
                extra={"deliveryId": entry.delivery_id, "reason": type(exc).__name__},
            )
            out["payloadReadError"] = "Failed to read payload from object storage"
    return JSONResponse(out)


async def replay_event_log(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/event-log/{delivery_id}/replay?orgId=: process a stored delivery again."""
    caller.require("event_dlq.manage")
    entry = await _entry(request, ctx, caller)
    if not await ctx.inbox.replay(entry.org_id, entry.delivery_id):
        raise fail(404, "Delivery not found")
    ctx.wake_worker()
    log.info("Delivery replayed", extra={"deliveryId": entry.delivery_id, "orgId": entry.org_id})
    return JSONResponse({"replayed": True, "orgId": entry.org_id, "deliveryId": entry.delivery_id}, status_code=202)


# ------------------------------------------------------------------------------------------ admin tokens
def _admin_token_json(t: AdminToken) -> JSONObject:
    return {
        "id": t.id,
        "label": t.label,
        "role": t.role,
        "routing_key": t.routing_key,
        "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at),
        "last_used_at": iso(t.last_used_at),
        "revoked": t.revoked,
    }


async def create_admin_token(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/tokens"""
    caller.require_unscoped()
    caller.require("token.manage")
    body = bodies.parse(bodies.AdminTokenBody, await json_body(request))
    label, role, routing_key = body.label, body.role, body.routingKey
    text = new_admin_token()
    token = AdminToken(id=ctx.ids(), label=label, role=role, routing_key=routing_key)
    token = await tokens_of(ctx).create_admin_token(token, token_hash(text))
    log.info("Admin token created", extra={"tokenId": token.id, "role": role, "routingKey": routing_key})
    return JSONResponse({"token": text, "id": token.id}, status_code=201)


async def list_admin_tokens(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/tokens"""
    caller.require_unscoped()
    caller.require("token.manage")
    return JSONResponse({"tokens": [_admin_token_json(t) for t in await tokens_of(ctx).list_admin_tokens()]})


async def revoke_admin_token(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """DELETE /api/v1/admin/tokens/{token_id}"""
    caller.require_unscoped()
    caller.require("token.manage")
    if not await tokens_of(ctx).revoke_admin_token(request.path_params["token_id"]):
        raise fail(404, "Token not found or already revoked")
    return JSONResponse({"revoked": True})


# ------------------------------------------------------------------------------------------ agent tokens
def _agent_token_json(t: AgentToken) -> JSONObject:
    return {
        "id": t.id,
        "tokenPrefix": t.token_prefix,
        "labels": list(t.labels),
        "mandatoryLabels": list(t.mandatory_labels),
        "agentType": t.agent_type,
        "createdAt": iso(t.created_at),
        "lastSeenAt": iso(t.last_seen_at),
        "expiresAt": iso(t.expires_at),
    }


async def create_agent_token(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/agent-tokens"""
    caller.require_unscoped()
    caller.require("token.manage")
    body = bodies.parse(bodies.AgentTokenBody, await json_body(request))
    labels, mandatory, created_by = body.labels or [], body.mandatoryLabels or [], body.createdBy
    text = new_agent_token()
    token = AgentToken(
        id=ctx.ids(),
        token_prefix=text[:AGENT_PREFIX_SHOWN],
        labels=tuple(labels),
        mandatory_labels=tuple(mandatory),
        created_by=created_by or caller.token.label,
    )
    token = await tokens_of(ctx).create_agent_token(token, token_hash(text))
    log.info("Agent token created", extra={"tokenId": token.id, "tokenPrefix": token.token_prefix})
    return JSONResponse(
        {
            "id": token.id,
            "token": text,
            "tokenPrefix": token.token_prefix,
            "labels": list(token.labels),
            "agentType": "static",
            "createdAt": iso(token.created_at),
        },
        status_code=201,
    )


async def list_agent_tokens(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/agent-tokens?type="""
    caller.require_unscoped()
    caller.require("token.manage")
    kind = request.query_params.get("type")
    found = [t for t in await tokens_of(ctx).list_agent_tokens() if not kind or t.agent_type == kind]
    return JSONResponse({"tokens": [_agent_token_json(t) for t in found]})


async def revoke_agent_token(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """DELETE /api/v1/agent-tokens/{token_id}: revoke and close every live socket using it."""
    caller.require_unscoped()
    caller.require("token.manage")
    token_id = request.path_params["token_id"]
    if not await tokens_of(ctx).revoke_agent_token(token_id):
        raise fail(404, "Agent token not found or already revoked")
    kicked = await ctx.kick_agent_token(token_id) if ctx.kick_agent_token is not None else 0
    log.info("Agent token revoked", extra={"tokenId": token_id, "kicked": kicked})
    return JSONResponse({"kicked": kicked})


async def release_agent(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/agents/{agent_id}/release: free an agent id from the token that first registered it,
    so that another agent token may register it."""
    caller.require_unscoped()
    caller.require("token.manage")
    agent_id = request.path_params["agent_id"]
    if ctx.release_agent is None:
        raise fail(503, "Agent registry unavailable")
    if not await ctx.release_agent(agent_id):
        raise fail(404, "Agent not found or not bound to a token")
    log.info("Agent id released from its token", extra={"agentId": agent_id})
    return JSONResponse({"released": True, "agentId": agent_id})


# ------------------------------------------------------------------------------------------ keys, database
async def rotate_key(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/rotate-key"""
    caller.require_unscoped()
    caller.require("key.rotate")
    if ctx.rotate_key is None:
        raise fail(503, "Key rotation is not available on this server")
    count = await ctx.rotate_key()
    log.info("Master key rotation finished", extra={"reEncrypted": count})
    return JSONResponse({"reEncrypted": count, "reEncryptedConfigs": 0, "skippedConfigs": 0})


async def db_migrate(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/db/migrate"""
    caller.require_unscoped()
    if ctx.migrate is None:
        raise fail(503, "Migrations are not available on this server")
    applied = await ctx.migrate()
    return JSONResponse({"applied": len(applied), "migrations": list(applied)})


async def db_status(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/db/migrate/status"""
    caller.require_unscoped()
    if ctx.migration_status is None:
        raise fail(503, "Migrations are not available on this server")
    migrations: list[JSONValue] = list(await ctx.migration_status())
    return JSONResponse({"migrations": migrations})


_ADMIN = "/api/v1/admin"
routes = [
    Route(f"{_ADMIN}/event-log", endpoint(list_event_log), methods=["GET"]),
    # delivery ids may contain "/" (generic idempotency keys): match the whole rest, replay first
    Route(f"{_ADMIN}/event-log/{{delivery_id:path}}/replay", endpoint(replay_event_log), methods=["POST"]),
    Route(f"{_ADMIN}/event-log/{{delivery_id:path}}", endpoint(show_event_log), methods=["GET"]),
    Route(f"{_ADMIN}/tokens", endpoint(create_admin_token), methods=["POST"]),
    Route(f"{_ADMIN}/tokens", endpoint(list_admin_tokens), methods=["GET"]),
    Route(f"{_ADMIN}/tokens/{{token_id}}", endpoint(revoke_admin_token), methods=["DELETE"]),
    Route("/api/v1/agent-tokens", endpoint(create_agent_token), methods=["POST"]),
    Route("/api/v1/agent-tokens", endpoint(list_agent_tokens), methods=["GET"]),
    Route("/api/v1/agent-tokens/{token_id}", endpoint(revoke_agent_token), methods=["DELETE"]),
    Route(f"{_ADMIN}/agents/{{agent_id}}/release", endpoint(release_agent), methods=["POST"]),
    Route(f"{_ADMIN}/rotate-key", endpoint(rotate_key), methods=["POST"]),
    Route(f"{_ADMIN}/db/migrate", endpoint(db_migrate), methods=["POST"]),
    Route(f"{_ADMIN}/db/migrate/status", endpoint(db_status), methods=["GET"]),
]
