"""Admin API: GitHub App sources and generic/local webhook sources (operations spec §2.2, §2.4-2.5, §3.3).

Secrets (a GitHub App's ``privateKey`` and ``webhookSecret``, a generic source's HMAC secret, bearer token or
API key) go to the SecretStore under org ``__system__``; source rows keep only non-secret settings. Responses
never carry a secret, except the explicit ``GET .../webhook-secret``; listings show a fingerprint (the last
four characters). Stores are read per request, so a change is live at once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kici_adapters.github import app as github_app
from kici_core import errors, webhooks
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.source_records import GenericSource, GitHubSource
from kici_runtime.orchestrator.admin import bodies
from kici_runtime.orchestrator.admin.auth import Caller, endpoint, fail, json_body, validation
from kici_runtime.orchestrator.context import AppContext

log = logging.getLogger("kici.admin")

SYSTEM_ORG = "__system__"
PREVIOUS_WEBHOOK_SECRET = "webhookSecretPrevious"
_APP_ID = re.compile(r"^[0-9]{1,20}$")
MAX_ORG_ID = bodies.MAX_ORG_ID


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and ``Z``, or None."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def fingerprint(secret: str | None) -> str | None:
    """``…abcd``: enough to tell two secrets apart, never the secret."""
    if not secret:
        return None
    return "…" + secret[-4:] if len(secret) >= 12 else "…"


def github_scope(source_id: str) -> str:
    return f"__source__/{source_id}"


def generic_scope(source_id: str) -> str:
    return f"__webhook__/{source_id}"


# ------------------------------------------------------------------------------------------ GitHub sources
async def _github_json(ctx: AppContext, s: GitHubSource) -> JSONObject:
    secret = await ctx.secrets.get(SYSTEM_ORG, github_scope(s.id), "webhookSecret")
    previous = await ctx.secrets.get(SYSTEM_ORG, github_scope(s.id), PREVIOUS_WEBHOOK_SECRET)
    config: dict[str, JSONValue] = {"appId": s.app_id}
    if s.api_url:
        config["apiUrl"] = s.api_url
    return {
        "id": s.id,
        "provider": "github",
        "name": s.name,
        "routingKey": s.routing_key,
        "customerId": s.customer_id,
        "slug": s.slug,
        "config": config,
        "createdAt": iso(s.created_at),
        "updatedAt": iso(s.updated_at),
        "webhookSecretFingerprint": fingerprint(secret),
        "rotationWindow": previous is not None,
    }


def _webhook_url(ctx: AppContext, s: GitHubSource) -> tuple[str | None, str | None]:
    if not ctx.direct_webhooks_enabled:
        return None, "github-ingress-platform-only"
    if not ctx.webhook_public_url:
        return None, "webhook-public-url-not-set"
    org = s.customer_id if s.customer_id != "__default__" else "default"
    return f"{ctx.webhook_public_url.rstrip('/')}{ctx.base_path}/webhook/{org}/github", None


def _check_key(pem: str) -> None:
    try:
        github_app.check_private_key(pem)
    except errors.InvalidInput as exc:
        raise validation([{"path": ["privateKey"], "message": exc.message}]) from None


async def add_github_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/sources"""
    caller.require_unscoped()
    caller.require("context.create")
    body = await json_body(request)
    app_id_raw = body.get("appId")
    app_id = str(app_id_raw) if isinstance(app_id_raw, int | str) and not isinstance(app_id_raw, bool) else ""
    if not body.get("provider") or not body.get("name") or not app_id or not body.get("privateKey"):
        raise fail(400, "Missing required fields: provider, name, appId, privateKey")
    if body["provider"] != "github":
        raise validation([{"path": ["provider"], "message": 'must be "github"'}])
    given, problems = bodies.validate(bodies.GitHubSourceBody, body)
    if not _APP_ID.match(app_id):
        problems.append({"path": ["appId"], "message": "must be the numeric GitHub App ID"})
    if given is None or problems:
        raise validation(problems)
    name, private_key, webhook_secret, slug = given.name, given.privateKey, given.webhookSecret, given.slug
    customer_id, api_url, verify = given.customerId or "__default__", given.apiUrl, given.verify
    _check_key(private_key)
    routing_key = f"github:{app_id}"
    await _refuse_existing_github(ctx, routing_key)
    if verify:  # only on request: an air-gapped orchestrator must be able to register Apps
        if ctx.github_app_check is None:
            raise fail(
                400,
                "GitHub validation is disabled on this orchestrator "
                "(KICI_SKIP_GITHUB_SOURCE_VALIDATION=true); add the source without --verify",
            )
        try:
            identity = await ctx.github_app_check(app_id, private_key, api_url)
        except errors.KiciError as exc:
            raise fail(
                400,
                f"GitHub API validation failed: {exc.message} "
                "(without --verify the App is registered without contacting GitHub)",
            ) from None
        name = str(identity.get("name") or name)
        slug = str(identity.get("slug") or slug or "") or None
    source = GitHubSource(
        id=ctx.ids(),
        routing_key=routing_key,
        name=name,
        app_id=app_id,
        customer_id=customer_id,
        api_url=api_url,
        slug=slug,
    )
    try:
        source = await ctx.sources.add_github(source)
    except errors.Conflict:
        await _refuse_existing_github(ctx, routing_key)
        raise
    try:
        await ctx.secrets.put(SYSTEM_ORG, github_scope(source.id), "privateKey", private_key)
        if webhook_secret:
            await ctx.secrets.put(SYSTEM_ORG, github_scope(source.id), "webhookSecret", webhook_secret)
    except BaseException:
        # a source without its credentials is useless: undo the row
        await ctx.sources.remove_github(routing_key)
        await ctx.secrets.delete(SYSTEM_ORG, github_scope(source.id))
        raise
    log.info("GitHub source added", extra={"routingKey": routing_key, "sourceName": source.name})
    url, note = _webhook_url(ctx, source)
    out: dict[str, JSONValue] = {"routingKey": routing_key, "id": source.id, "name": source.name, "webhookUrl": url}
    if note is not None:
        out["webhookNote"] = note
    return JSONResponse(out, status_code=201)


async def _refuse_existing_github(ctx: AppContext, routing_key: str) -> None:
    """409 naming the source already registered under ``routing_key``."""
    existing = await ctx.sources.github_by_routing_key(routing_key)
    if existing is not None:
        raise fail(
            409,
            f"Source with routing key {routing_key} already exists",
            routingKey=routing_key,
            id=existing.id,
            name=existing.name,
        )


async def list_github_sources(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/sources"""
    caller.require("context.read")
    found = [s for s in await ctx.sources.list_github() if caller.may_see(s.routing_key)]
    return JSONResponse({"sources": [await _github_json(ctx, s) for s in found]})


async def _github_target(ctx: AppContext, caller: Caller, request: Request, permission: str) -> str:
    routing_key = request.path_params["routing_key"]
    caller.require_key(routing_key)
    caller.require(permission)
    return str(routing_key)


async def update_github_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """PATCH /api/v1/admin/sources/{routing_key}: rename, new key, webhook-secret rotation."""
    routing_key = await _github_target(ctx, caller, request, "context.update")
    body = bodies.parse(bodies.GitHubSourceUpdateBody, await json_body(request))
    name, private_key, webhook_secret, customer_id = body.name, body.privateKey, body.webhookSecret, body.customerId
    slug, api_url, drop_previous = body.slug, body.apiUrl, body.dropPreviousWebhookSecret
    source = await ctx.sources.github_by_routing_key(routing_key)
    if source is None:
        raise fail(404, "Source not found")
    if private_key is not None:
        _check_key(private_key)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if customer_id is not None:
        changes["customer_id"] = customer_id
    if "slug" in body.model_fields_set:
        changes["slug"] = slug
    if "apiUrl" in body.model_fields_set:
        changes["api_url"] = api_url
    if changes:
        source = await ctx.sources.update_github(dataclasses.replace(source, **changes))
    scope = github_scope(source.id)
    if private_key is not None:
        await ctx.secrets.put(SYSTEM_ORG, scope, "privateKey", private_key)
    if webhook_secret is not None:
        current = await ctx.secrets.get(SYSTEM_ORG, scope, "webhookSecret")
        if current and current != webhook_secret:
            # rotation window: deliveries signed with the old secret still verify until it is dropped
            await ctx.secrets.put(SYSTEM_ORG, scope, PREVIOUS_WEBHOOK_SECRET, current)
        await ctx.secrets.put(SYSTEM_ORG, scope, "webhookSecret", webhook_secret)
        log.info("GitHub source webhook secret rotated", extra={"routingKey": routing_key})
    if drop_previous:
        await ctx.secrets.delete(SYSTEM_ORG, scope, PREVIOUS_WEBHOOK_SECRET)
    return JSONResponse({"routingKey": routing_key, "name": source.name})


async def remove_github_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """DELETE /api/v1/admin/sources/{routing_key} (idempotent)."""
    routing_key = await _github_target(ctx, caller, request, "context.delete")
    source = await ctx.sources.github_by_routing_key(routing_key)
    if source is not None:
        await ctx.secrets.delete(SYSTEM_ORG, github_scope(source.id))
        await ctx.sources.remove_github(routing_key)
        log.info("GitHub source removed", extra={"routingKey": routing_key})
    return JSONResponse({"ok": True})


async def get_webhook_secret(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/sources/{routing_key}/webhook-secret: the one route that reveals a secret."""
    routing_key = await _github_target(ctx, caller, request, "secret.read")
    source = await ctx.sources.github_by_routing_key(routing_key)
    if source is None:
        raise fail(404, "Source not found")
    secret = await ctx.secrets.get(SYSTEM_ORG, github_scope(source.id), "webhookSecret")
    log.info("GitHub webhook secret read", extra={"routingKey": routing_key, "tokenId": caller.token.id})
    return JSONResponse({"routingKey": routing_key, "webhookSecret": secret})


# ------------------------------------------------------------------------------------------ generic sources
async def _generic_json(ctx: AppContext, s: GenericSource) -> JSONObject:
    config: dict[str, JSONValue] = dict(s.verification_config)
    key = webhooks.SECRET_METHODS.get(s.verification_method)
    if key is not None:
        config["secretFingerprint"] = fingerprint(await ctx.secrets.get(SYSTEM_ORG, generic_scope(s.id), key))
    return {
        "id": s.id,
        "orgId": s.org_id,
        "customerId": s.org_id,
        "name": s.name,
        "routingKey": s.routing_key,
        "providerType": s.provider_type,
        "verificationMethod": s.verification_method,
        "verificationConfig": config,
        "eventTypeHeader": s.event_type_header,
        "eventTypePath": s.event_type_path,
        "idempotencyKeyHeader": s.idempotency_key_header,
        "idempotencyKeyPath": s.idempotency_key_path,
        "dedupWindowSeconds": s.dedup_window_seconds,
        "maxPayloadBytes": s.max_payload_bytes,
        "allowedEvents": list(s.allowed_events) if s.allowed_events is not None else None,
        "enabled": s.enabled,
        "rateLimitRpm": s.rate_limit_rpm,
        "gitConfig": s.git_config,
        "createdAt": iso(s.created_at),
        "updatedAt": iso(s.updated_at),
        "deletedAt": iso(s.deleted_at),
    }


Problems = list[dict[str, Any]]


def _problem(problems: Problems, name: str, message: str) -> None:
    problems.append({"path": [name], "message": message})


def _split_secret(method: str, config: dict[str, Any], problems: Problems) -> tuple[JSONObject, str | None]:
    """Take the secret out of ``verificationConfig``; what remains is stored on the row."""
    rest: dict[str, JSONValue] = {k: v for k, v in config.items() if k not in ("secret", "token", "key", "secretRef")}
    key = webhooks.SECRET_METHODS.get(method)
    if key is None:
        if method == "ip_allowlist":
            allow = config.get("allowlist")
            if not isinstance(allow, list) or not allow or not all(isinstance(a, str) for a in allow):
                _problem(problems, "verificationConfig", "allowlist must be a non-empty array of IP addresses")
        return rest, None
    value = config.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        _problem(problems, "verificationConfig", f"{key} must be a non-empty string")
        return rest, None
    rest["secretRef"] = True
    return rest, value


LOCAL_DISABLED = "local sources are disabled: set KICI_ALLOW_LOCAL_SOURCES=true (or KICI_DEV=true)"
LOCAL_NEEDS_VERIFICATION = "a local source needs verification (hmac_sha256, bearer_token, api_key or ip_allowlist)"


def _git_config(provider_type: str, value: Any, problems: Problems) -> JSONObject | None:
    if value is None:
        if provider_type == "local":
            _problem(problems, "gitConfig", 'a local source needs gitConfig {"url": "file://..."}')
        return None
    if not isinstance(value, dict):
        _problem(problems, "gitConfig", "must be an object")
        return None
    url = value.get("url")
    if provider_type == "local" and (not isinstance(url, str) or not url.startswith("file://")):
        _problem(problems, "gitConfig", "url must be a file:// URL for a local source")
    return dict(value)


async def create_generic_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/generic-sources"""
    caller.require_unscoped()
    caller.require("context.create")
    body = bodies.parse(bodies.GenericSourceBody, await json_body(request))
    org_id, name = body.orgId, body.name
    problems: Problems = []
    provider_type = body.providerType or "generic"
    if provider_type == "local" and not ctx.local_sources_enabled:
        _problem(problems, "providerType", LOCAL_DISABLED)
    method = body.verificationMethod or "hmac_sha256"
    if provider_type == "local" and method == "none":
        _problem(problems, "verificationMethod", LOCAL_NEEDS_VERIFICATION)
    config, secret = _split_secret(method, body.verificationConfig or {}, problems)
    if method in webhooks.SECRET_METHODS and secret is None:
        _problem(problems, "verificationConfig", f"{webhooks.SECRET_METHODS[method]} is required for {method}")
    git_config = _git_config(provider_type, body.gitConfig, problems)
    extra = body.settings()
    if problems:
        raise validation(problems)
    source_id = ctx.ids()
    source = GenericSource(
        id=source_id,
        org_id=org_id,
        name=name,
        routing_key=f"generic:{org_id}:{source_id}",
        provider_type="local" if provider_type == "local" else "generic",
        verification_method=method,
        verification_config=config,
        git_config=git_config,
        **extra,
    )
    try:
        source = await ctx.sources.add_generic(source)
    except errors.Conflict:
        await _refuse_existing_generic(ctx, org_id, name)
        raise
    if secret is not None:
        try:
            await ctx.secrets.put(SYSTEM_ORG, generic_scope(source.id), webhooks.SECRET_METHODS[method], secret)
        except BaseException:
            await ctx.sources.remove_generic(source.id, hard=True)
            raise
    log.info("Generic source created", extra={"routingKey": source.routing_key, "sourceName": name})
    return JSONResponse({"source": await _generic_json(ctx, source)}, status_code=201)


async def _refuse_existing_generic(ctx: AppContext, org_id: str, name: str) -> None:
    """409 naming the live source called ``name`` in ``org_id``."""
    for other in await ctx.sources.list_generic(org_id):
        if other.name == name:
            raise fail(
                409,
                f'Generic source "{name}" already exists in org {org_id} (id {other.id})',
                routingKey=other.routing_key,
                id=other.id,
                name=name,
                orgId=org_id,
            )


async def list_generic_sources(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/generic-sources?orgId=&includeDeleted= (every org's sources without ``orgId``)"""
    caller.require("context.read")
    org_id = request.query_params.get("orgId") or None
    include_deleted = request.query_params.get("includeDeleted") == "true"
    found = await ctx.sources.list_generic(org_id, include_deleted=include_deleted)
    return JSONResponse({"sources": [await _generic_json(ctx, s) for s in found if caller.may_see(s.routing_key)]})


async def _generic_target(request: Request, ctx: AppContext, caller: Caller, permission: str) -> GenericSource:
    caller.require(permission)
    source = await ctx.sources.generic_by_id(request.path_params["source_id"])
    if source is None:
        raise fail(404, "Source not found")
    caller.require_key(source.routing_key)
    return source


async def get_generic_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """GET /api/v1/admin/generic-sources/{source_id}"""
    source = await _generic_target(request, ctx, caller, "context.read")
    return JSONResponse({"source": await _generic_json(ctx, source)})


async def update_generic_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """PATCH /api/v1/admin/generic-sources/{source_id}: partial update; ``gitConfig: null`` clears."""
    source = await _generic_target(request, ctx, caller, "context.update")
    body = bodies.parse(bodies.GenericSourceUpdateBody, await json_body(request))
    problems: Problems = []
    changes = body.settings()
    if body.name is not None:
        changes["name"] = body.name
    method = body.verificationMethod or source.verification_method
    if source.provider_type == "local" and method == "none" and method != source.verification_method:
        _problem(problems, "verificationMethod", LOCAL_NEEDS_VERIFICATION)
    secret: str | None = None
    if "verificationConfig" in body.model_fields_set or method != source.verification_method:
        config, secret = _split_secret(method, body.verificationConfig or {}, problems)
        old_key = webhooks.SECRET_METHODS.get(source.verification_method)
        new_key = webhooks.SECRET_METHODS.get(method)
        if new_key is not None and secret is None and new_key != old_key:
            _problem(problems, "verificationConfig", f"{new_key} is required for {method}")
        changes["verification_method"] = method
        changes["verification_config"] = config
    if "gitConfig" in body.model_fields_set:
        changes["git_config"] = (
            None if body.gitConfig is None else _git_config(source.provider_type, body.gitConfig, problems)
        )
    if problems:
        raise validation(problems)
    if not changes:
        raise fail(400, "Validation error: no fields to update")
    try:
        updated = await ctx.sources.update_generic(dataclasses.replace(source, **changes))
    except errors.Conflict:  # renamed onto another live source of the org
        await _refuse_existing_generic(ctx, source.org_id, str(changes.get("name", source.name)))
        raise
    scope = generic_scope(source.id)
    old_key = webhooks.SECRET_METHODS.get(source.verification_method)
    new_key = webhooks.SECRET_METHODS.get(updated.verification_method)
    if secret is not None and new_key is not None:
        await ctx.secrets.put(SYSTEM_ORG, scope, new_key, secret)
        log.info("Generic source secret replaced", extra={"routingKey": source.routing_key})
    if old_key is not None and old_key != new_key:
        await ctx.secrets.delete(SYSTEM_ORG, scope, old_key)
    return JSONResponse({"source": await _generic_json(ctx, updated)})


async def delete_generic_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """DELETE /api/v1/admin/generic-sources/{source_id}?hard=true"""
    source = await _generic_target(request, ctx, caller, "context.delete")
    hard = request.query_params.get("hard") == "true"
    await ctx.sources.remove_generic(source.id, hard=hard)
    if hard:
        await ctx.secrets.delete(SYSTEM_ORG, generic_scope(source.id))
    log.info("Generic source deleted", extra={"routingKey": source.routing_key, "hard": hard})
    return JSONResponse({"deleted": True, "hard": hard})


async def _set_enabled(request: Request, ctx: AppContext, caller: Caller, enabled: bool) -> Response:
    source = await _generic_target(request, ctx, caller, "context.update")
    if source.deleted_at is not None:
        raise fail(404, "Source not found")
    await ctx.sources.update_generic(dataclasses.replace(source, enabled=enabled))
    return JSONResponse({"enabled": enabled})


async def enable_generic_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/generic-sources/{source_id}/enable"""
    return await _set_enabled(request, ctx, caller, True)


async def disable_generic_source(request: Request, ctx: AppContext, caller: Caller) -> Response:
    """POST /api/v1/admin/generic-sources/{source_id}/disable"""
    return await _set_enabled(request, ctx, caller, False)


_ADMIN = "/api/v1/admin"
routes = [
    Route(f"{_ADMIN}/sources", endpoint(add_github_source), methods=["POST"]),
    Route(f"{_ADMIN}/sources", endpoint(list_github_sources), methods=["GET"]),
    Route(f"{_ADMIN}/sources/{{routing_key}}/webhook-secret", endpoint(get_webhook_secret), methods=["GET"]),
    Route(f"{_ADMIN}/sources/{{routing_key}}", endpoint(update_github_source), methods=["PATCH"]),
    Route(f"{_ADMIN}/sources/{{routing_key}}", endpoint(remove_github_source), methods=["DELETE"]),
    Route(f"{_ADMIN}/generic-sources", endpoint(create_generic_source), methods=["POST"]),
    Route(f"{_ADMIN}/generic-sources", endpoint(list_generic_sources), methods=["GET"]),
    Route(f"{_ADMIN}/generic-sources/{{source_id}}", endpoint(get_generic_source), methods=["GET"]),
    Route(f"{_ADMIN}/generic-sources/{{source_id}}", endpoint(update_generic_source), methods=["PATCH"]),
    Route(f"{_ADMIN}/generic-sources/{{source_id}}", endpoint(delete_generic_source), methods=["DELETE"]),
    Route(f"{_ADMIN}/generic-sources/{{source_id}}/enable", endpoint(enable_generic_source), methods=["POST"]),
    Route(f"{_ADMIN}/generic-sources/{{source_id}}/disable", endpoint(disable_generic_source), methods=["POST"]),
]
