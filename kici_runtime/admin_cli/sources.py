"""``kici-admin source ...``: GitHub App sources and generic/local webhook sources.

Secret values (private keys, webhook secrets, tokens) are accepted as ``<value>``, ``@file``, ``--from-env VAR``
or ``--stdin`` and are never printed, except by ``source get-webhook-secret``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import click

from kici_adapters.github import pem as pem_form
from kici_runtime.admin_cli.client import ApiError, client, die, echo_json, read_secret

METHODS = ("hmac_sha256", "bearer_token", "api_key", "ip_allowlist", "none")
SECRET_FIELD = {"hmac_sha256": "secret", "bearer_token": "token", "api_key": "key"}


def _rk(value: str) -> str:
    return quote(value, safe=":")


@click.group()
def source() -> None:
    """Webhook sources: GitHub Apps and generic/local sources."""


@source.group("add")
def add() -> None:
    """Register a webhook source."""


# ------------------------------------------------------------------------------------------ GitHub
def _already_exists(exc: ApiError, update_hint: str) -> NoReturn:
    """A 409 on add: name the source that exists and how to change it."""
    b = exc.body
    if "routingKey" not in b:
        raise exc
    what = f'"{b["name"]}" in org {b["orgId"]}' if b.get("orgId") else f'{b["routingKey"]} ("{b.get("name")}")'
    die(f"source {what} already exists (id {b.get('id')}, routing key {b['routingKey']}); {update_hint}")


@add.command("github")
@click.option("--name", required=True, help="A name for the source (with --verify, GitHub's App name wins).")
@click.option("--app-id", help="The GitHub App ID.")
@click.option("--private-key", help="The App's PEM private key, or @path/to/key.pem.")
@click.option("--webhook-secret", help="The App's webhook secret, or @file.")
@click.option("--from-env", "from_env", metavar="VAR", help="Read the private key from this env variable.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Read the private key from stdin.")
@click.option("--customer-id", help="Org the source belongs to (default __default__).")
@click.option("--api-url", help="GitHub Enterprise REST base URL for this App.")
@click.option(
    "--verify",
    is_flag=True,
    help="Have the orchestrator call GitHub (GET /app) to prove the App ID and "
    "key before storing them. Without it GitHub is not contacted.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def add_github(
    ctx: click.Context,
    name: str,
    app_id: str | None,
    private_key: str | None,
    webhook_secret: str | None,
    from_env: str | None,
    use_stdin: bool,
    customer_id: str | None,
    api_url: str | None,
    verify: bool,
    as_json: bool,
) -> None:
    """Register a GitHub App (the key's form checked here, the key by the orchestrator; GitHub only with --verify)."""
    if not app_id:
        die("--app-id is required (or use --manifest for one-click setup)")
    pem = read_secret(private_key, from_env, use_stdin)
    if not pem:
        die("Private key is required (--private-key, --stdin, or --from-env)")
    pem_form.check_pem_form(pem)
    secret = read_secret(webhook_secret, None, False)
    body: dict[str, Any] = {"provider": "github", "name": name, "appId": app_id, "privateKey": pem}
    for key, value in (("webhookSecret", secret), ("customerId", customer_id), ("apiUrl", api_url)):
        if value:
            body[key] = value
    if verify:
        body["verify"] = True
    try:
        out = client(ctx).request("POST", "/api/v1/admin/sources", body=body)
    except ApiError as exc:
        if exc.status != 409:
            raise
        rk = f"github:{app_id}"
        _already_exists(
            exc, f"change it with `kici-admin source update {rk} ...` or remove it with `kici-admin source remove {rk}`"
        )
    if as_json:
        echo_json(out)
        return
    click.echo(f"Source added: {out['routingKey']} ({out['name']})")
    if verify:
        click.echo(f"  Verified with GitHub: the key belongs to App {app_id} ({out['name']}).")
    org = customer_id or "<orgId>"
    if out.get("webhookUrl"):
        click.echo(f"Webhook URL:  {out['webhookUrl']}")
    else:
        click.echo(f"Webhook URL:  (unavailable — {out.get('webhookNote') or 'unknown'})")
    click.echo(
        f"  Point the App's webhook at {client(ctx).url}/webhook/{org}/github (through your public URL), "
        "or at the Platform in platform mode."
    )
    if not secret:
        click.echo(
            "  No webhook secret stored: deliveries cannot be verified until you run "
            f"`kici-admin source update {out['routingKey']} --webhook-secret ...`."
        )


# ------------------------------------------------------------------------------------------ generic
def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [x.strip() for x in value.split(",") if x.strip()]


def _verification_config(method: str, secret: str | None, header_name: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if header_name:
        config["headerName"] = header_name
    if secret is None:
        return config
    if method == "ip_allowlist":
        config["allowlist"] = _csv(secret) or []
    elif method in SECRET_FIELD:
        config[SECRET_FIELD[method]] = secret
    return config


@add.command("generic")
@click.option("--org", "org_id", required=True, help="Org id (the <orgId> of the webhook URL).")
@click.option("--name", required=True, help="Source name (the <sourceId> of the webhook URL).")
@click.option("--verification", type=click.Choice(METHODS), help="Default hmac_sha256 (local sources cannot use none).")
@click.option("--secret", help="HMAC secret, bearer token, API key or IP allowlist (csv); or @file.")
@click.option("--from-env", "from_env", metavar="VAR", help="Read the secret from this env variable.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Read the secret from stdin.")
@click.option("--header-name", help="Header carrying the signature/token (default per method).")
@click.option("--event-type-header", help="Header naming the event type.")
@click.option("--event-type-path", help="Dot path of the event type in the JSON body.")
@click.option("--idempotency-key-header", help="Header carrying the delivery id.")
@click.option("--idempotency-key-path", help="Dot path of the delivery id in the body.")
@click.option("--dedup-window", type=int, help="Seconds (default 300).")
@click.option("--max-payload", type=int, help="Bytes (default 1048576).")
@click.option("--allowed-events", help="Comma-separated event types to accept (default all).")
@click.option("--rate-limit", type=int, help="Requests per minute (default 600).")
@click.option("--provider-type", type=click.Choice(["generic", "local"]), help="Default generic.")
@click.option("--local-repo", type=click.Path(file_okay=False), help="A local git repository: makes a local source.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def add_generic(
    ctx: click.Context,
    org_id: str,
    name: str,
    verification: str | None,
    secret: str | None,
    from_env: str | None,
    use_stdin: bool,
    header_name: str | None,
    event_type_header: str | None,
    event_type_path: str | None,
    idempotency_key_header: str | None,
    idempotency_key_path: str | None,
    dedup_window: int | None,
    max_payload: int | None,
    allowed_events: str | None,
    rate_limit: int | None,
    provider_type: str | None,
    local_repo: str | None,
    as_json: bool,
) -> None:
    """Register a generic (or local) webhook source."""
    value = read_secret(secret, from_env, use_stdin)
    if local_repo is not None:
        provider_type = "local"
    method = verification or "hmac_sha256"
    body: dict[str, Any] = {
        "orgId": org_id,
        "name": name,
        "verificationMethod": method,
        "verificationConfig": _verification_config(method, value, header_name),
    }
    if provider_type:
        body["providerType"] = provider_type
    if local_repo is not None:
        body["gitConfig"] = {"url": Path(local_repo).resolve().as_uri()}
    for key, val in (
        ("eventTypeHeader", event_type_header),
        ("eventTypePath", event_type_path),
        ("idempotencyKeyHeader", idempotency_key_header),
        ("idempotencyKeyPath", idempotency_key_path),
        ("dedupWindowSeconds", dedup_window),
        ("maxPayloadBytes", max_payload),
        ("allowedEvents", _csv(allowed_events)),
        ("rateLimitRpm", rate_limit),
    ):
        if val is not None:
            body[key] = val
    try:
        out = client(ctx).request("POST", "/api/v1/admin/generic-sources", body=body)
    except ApiError as exc:
        if exc.status != 409:
            raise
        _already_exists(exc, f"change it with `kici-admin source update-generic {exc.body.get('id')} ...`")
    if as_json:
        echo_json(out)
        return
    s = out["source"]
    click.echo("Generic source created:")
    _generic_lines(s)
    click.echo(f"  Webhook URL:  {client(ctx).url}/webhook/{s['orgId']}/generic/{quote(s['name'], safe='')}")


def _generic_lines(s: dict[str, Any]) -> None:
    click.echo(f"  ID:           {s['id']}")
    click.echo(f"  Name:         {s['name']}")
    click.echo(f"  Routing key:  {s['routingKey']}")
    click.echo(f"  Org:          {s['orgId']}")
    click.echo(f"  Type:         {s['providerType']}")
    click.echo(f"  Verification: {s['verificationMethod']}")
    fp = (s.get("verificationConfig") or {}).get("secretFingerprint")
    if fp:
        click.echo(f"  Secret:       {fp}")
    click.echo(f"  Enabled:      {'yes' if s['enabled'] else 'no'}")
    if s.get("deletedAt"):
        click.echo(f"  Deleted at:   {s['deletedAt']}")


# ------------------------------------------------------------------------------------------ read
@source.command("list")
@click.option("--org", "org_id", help="Only this org's generic sources (default: every org).")
@click.option("--include-deleted", is_flag=True, help="Include soft-deleted generic sources.")
@click.option("--json", "as_json", is_flag=True, help="Print {github: [...], generic: [...]}.")
@click.pass_context
def list_sources(ctx: click.Context, org_id: str | None, include_deleted: bool, as_json: bool) -> None:
    """List webhook sources: GitHub Apps, and generic/local sources of every org (secrets never shown)."""
    api = client(ctx)
    github = api.request("GET", "/api/v1/admin/sources")["sources"]
    generic = api.request(
        "GET",
        "/api/v1/admin/generic-sources",
        params={"orgId": org_id, "includeDeleted": "true" if include_deleted else None},
    )["sources"]
    if as_json:
        echo_json({"github": github, "generic": generic})
        return
    if not github and not generic:
        click.echo("No sources configured.")
    if github:
        click.echo("GitHub sources:")
        for s in github:
            secret = s.get("webhookSecretFingerprint") or "no webhook secret"
            click.echo(
                f"  {s['routingKey']:<20} {s['name']:<30} ({s['provider']}) secret {secret}"
                + (" [rotating]" if s.get("rotationWindow") else "")
            )
    if generic:
        click.echo("Generic sources:")
        for s in generic:
            state = "enabled" if s["enabled"] else "disabled"
            deleted = " [deleted]" if s.get("deletedAt") else ""
            click.echo(f"  {s['id']}  {s['name']:<30} {state:<8} {s['routingKey']}{deleted}")


def _show(ctx: click.Context, ref: str, as_json: bool) -> None:
    api = client(ctx)
    if ref.startswith("github:"):
        found = [s for s in api.request("GET", "/api/v1/admin/sources")["sources"] if s["routingKey"] == ref]
        if not found:
            die("HTTP 404: Source not found")
        s = found[0]
        if as_json:
            echo_json(s)
            return
        click.echo(f"Source: {s['routingKey']}")
        click.echo(f"  ID:           {s['id']}")
        click.echo(f"  Name:         {s['name']}")
        click.echo(f"  Provider:     {s['provider']}")
        click.echo(f"  App ID:       {s['config'].get('appId')}")
        click.echo(f"  Org:          {s['customerId']}")
        if s.get("slug"):
            click.echo(f"  Slug:         {s['slug']}")
        click.echo(
            f"  Webhook secret: {s.get('webhookSecretFingerprint') or '(none)'}"
            + ("  (previous secret still accepted)" if s.get("rotationWindow") else "")
        )
        click.echo(f"  Created at:   {s.get('createdAt')}")
        click.echo(f"  Updated at:   {s.get('updatedAt')}")
        return
    source_id = ref.rsplit(":", 1)[-1] if ref.startswith("generic:") else ref
    s = api.request("GET", f"/api/v1/admin/generic-sources/{quote(source_id, safe='')}")["source"]
    if as_json:
        echo_json(s)
        return
    click.echo(f"Source: {s['routingKey']}")
    _generic_lines(s)


@source.command("show")
@click.argument("ref", metavar="ROUTING_KEY|ID")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show one source: a GitHub routing key (github:<appId>) or a generic source id / routing key."""
    _show(ctx, ref, as_json)


@source.command("get")
@click.argument("source_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def get(ctx: click.Context, source_id: str, as_json: bool) -> None:
    """Show one generic source by id (same as `source show`)."""
    _show(ctx, source_id, as_json)


@source.command("get-webhook-secret")
@click.argument("routing_key")
@click.pass_context
def get_webhook_secret(ctx: click.Context, routing_key: str) -> None:
    """Print a GitHub source's webhook secret (the only command that prints a secret)."""
    out = client(ctx).request("GET", f"/api/v1/admin/sources/{_rk(routing_key)}/webhook-secret")
    if not out.get("webhookSecret"):
        die(f"No webhook secret is stored for {routing_key}")
    click.echo(out["webhookSecret"])


# ------------------------------------------------------------------------------------------ change
def _update_github(ctx: click.Context, routing_key: str, body: dict[str, Any]) -> None:
    client(ctx).request("PATCH", f"/api/v1/admin/sources/{_rk(routing_key)}", body=body)


@source.command("update")
@click.argument("routing_key")
@click.option("--name")
@click.option("--private-key", help="New PEM private key, or @file.")
@click.option(
    "--webhook-secret",
    help="New webhook secret, or @file (the previous one keeps working until --drop-previous-secret).",
)
@click.option("--from-env", "from_env", metavar="VAR", help="Read the private key from this env variable.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Read the private key from stdin.")
@click.option("--customer-id")
@click.option("--drop-previous-secret", is_flag=True, help="End a webhook-secret rotation window.")
@click.pass_context
def update(
    ctx: click.Context,
    routing_key: str,
    name: str | None,
    private_key: str | None,
    webhook_secret: str | None,
    from_env: str | None,
    use_stdin: bool,
    customer_id: str | None,
    drop_previous_secret: bool,
) -> None:
    """Update a GitHub source: name, private key, webhook secret (rotation)."""
    body: dict[str, Any] = {}
    pem = read_secret(private_key, from_env, use_stdin)
    if pem:
        pem_form.check_pem_form(pem)
        body["privateKey"] = pem
    secret = read_secret(webhook_secret, None, False)
    for key, val in (("name", name), ("webhookSecret", secret), ("customerId", customer_id)):
        if val:
            body[key] = val
    if drop_previous_secret:
        body["dropPreviousWebhookSecret"] = True
    if not body:
        die("no fields to update. Provide at least one option.")
    _update_github(ctx, routing_key, body)
    click.echo(f"Source updated: {routing_key}")


@source.command("rotate-secret")
@click.argument("ref", metavar="ROUTING_KEY|ID")
@click.option("--webhook-secret", "--secret", "secret", help="The new secret, or @file.")
@click.option("--from-env", "from_env", metavar="VAR", help="Read the new secret from this env variable.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Read the new secret from stdin.")
@click.pass_context
def rotate_secret(ctx: click.Context, ref: str, secret: str | None, from_env: str | None, use_stdin: bool) -> None:
    """Replace a source's webhook secret (GitHub: the old one keeps verifying until dropped)."""
    value = read_secret(secret, from_env, use_stdin)
    if not value:
        die("a new secret is required (--webhook-secret, --from-env or --stdin)")
    if ref.startswith("github:"):
        _update_github(ctx, ref, {"webhookSecret": value})
        click.echo(f"Webhook secret rotated: {ref}")
        click.echo(
            "  Deliveries signed with the previous secret are still accepted; once GitHub uses the new "
            f"one, run `kici-admin source update {ref} --drop-previous-secret`."
        )
        return
    api = client(ctx)
    source_id = ref.rsplit(":", 1)[-1] if ref.startswith("generic:") else ref
    s = api.request("GET", f"/api/v1/admin/generic-sources/{quote(source_id, safe='')}")["source"]
    method = s["verificationMethod"]
    if method not in SECRET_FIELD:
        die(f"source {source_id} uses {method} verification, which has no secret")
    config = {
        k: v for k, v in (s.get("verificationConfig") or {}).items() if k not in ("secretRef", "secretFingerprint")
    }
    config[SECRET_FIELD[method]] = value
    api.request(
        "PATCH",
        f"/api/v1/admin/generic-sources/{quote(source_id, safe='')}",
        body={"verificationMethod": method, "verificationConfig": config},
    )
    click.echo(f"Secret rotated: {s['routingKey']}")


@source.command("remove")
@click.argument("ref", metavar="ROUTING_KEY|ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--generic", is_flag=True, help="REF is a generic source id.")
@click.option("--local", is_flag=True, help="REF is a local source id.")
@click.option("--hard", is_flag=True, help="Delete the generic source row instead of soft-deleting it.")
@click.pass_context
def remove(ctx: click.Context, ref: str, yes: bool, generic: bool, local: bool, hard: bool) -> None:
    """Remove a source (GitHub: row and secrets; generic: soft delete unless --hard)."""
    is_generic = generic or local
    if hard and not is_generic:
        die("--hard applies only to generic or local sources (--generic/--local)")
    if not yes and not click.confirm(
        f'Remove source "{ref}"?', default=False, prompt_suffix=" (y/N) ", show_default=False
    ):
        click.echo("Cancelled.")
        return
    api = client(ctx)
    if is_generic:
        api.request(
            "DELETE", f"/api/v1/admin/generic-sources/{quote(ref, safe='')}", params={"hard": "true" if hard else None}
        )
        click.echo(f"Generic source {'permanently deleted' if hard else 'soft-deleted'}: {ref}")
        return
    api.request("DELETE", f"/api/v1/admin/sources/{_rk(ref)}")
    click.echo(f"Source removed: {ref}")


@source.command("update-generic")
@click.argument("source_id")
@click.option("--name", help="New name (the <sourceId> of the webhook URL).")
@click.option("--verification", type=click.Choice(METHODS), help="Verification method (needed with --secret).")
@click.option("--secret", help="New HMAC secret, bearer token, API key or IP allowlist (csv); or @file.")
@click.option("--from-env", "from_env", metavar="VAR", help="Read the new secret from this env variable.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Read the new secret from stdin.")
@click.option("--header-name", help="Header carrying the signature/token (needs --verification).")
@click.option("--event-type-header", help="Header naming the event type.")
@click.option("--event-type-path", help="Dot path of the event type in the JSON body.")
@click.option("--idempotency-key-header", help="Header carrying the delivery id.")
@click.option("--idempotency-key-path", help="Dot path of the delivery id in the body.")
@click.option("--dedup-window", type=int, help="Seconds.")
@click.option("--max-payload", type=int, help="Bytes.")
@click.option("--allowed-events", help='Comma-separated event types to accept ("" accepts all).')
@click.option("--rate-limit", type=int, help="Requests per minute.")
@click.option("--local-repo", type=click.Path(file_okay=False), help="New repository of a local source.")
@click.option("--clear-git-config", is_flag=True, help="Remove the source's git settings.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def update_generic(
    ctx: click.Context,
    source_id: str,
    name: str | None,
    verification: str | None,
    secret: str | None,
    from_env: str | None,
    use_stdin: bool,
    header_name: str | None,
    event_type_header: str | None,
    event_type_path: str | None,
    idempotency_key_header: str | None,
    idempotency_key_path: str | None,
    dedup_window: int | None,
    max_payload: int | None,
    allowed_events: str | None,
    rate_limit: int | None,
    local_repo: str | None,
    clear_git_config: bool,
    as_json: bool,
) -> None:
    """Change a generic (or local) source; options left out keep their value."""
    value = read_secret(secret, from_env, use_stdin)
    if value is not None and verification is None:
        die("--verification is required when updating --secret (needed to format the config correctly)")
    if header_name is not None and verification is None:
        die("--verification is required when updating --header-name (needed to format the config correctly)")
    if local_repo is not None and clear_git_config:
        die("--local-repo and --clear-git-config exclude each other")
    body: dict[str, Any] = {}
    if verification is not None:
        body["verificationMethod"] = verification
        body["verificationConfig"] = _verification_config(verification, value, header_name)
    for key, val in (
        ("name", name),
        ("eventTypeHeader", event_type_header),
        ("eventTypePath", event_type_path),
        ("idempotencyKeyHeader", idempotency_key_header),
        ("idempotencyKeyPath", idempotency_key_path),
        ("dedupWindowSeconds", dedup_window),
        ("maxPayloadBytes", max_payload),
        ("rateLimitRpm", rate_limit),
    ):
        if val is not None:
            body[key] = val
    if allowed_events is not None:
        body["allowedEvents"] = _csv(allowed_events) or None
    if local_repo is not None:
        body["gitConfig"] = {"url": Path(local_repo).resolve().as_uri()}
    if clear_git_config:
        body["gitConfig"] = None
    if not body:
        die("no fields to update. Provide at least one option.")
    api = client(ctx)
    try:
        out = api.request("PATCH", f"/api/v1/admin/generic-sources/{quote(source_id, safe='')}", body=body)
    except ApiError as exc:
        if exc.status != 409:
            raise
        _already_exists(exc, "choose another --name")
    if as_json:
        echo_json(out)
        return
    click.echo(f"Generic source updated: {source_id}")
    _generic_lines(out["source"])


def _toggle(ctx: click.Context, source_id: str, enable: bool) -> None:
    verb = "enable" if enable else "disable"
    client(ctx).request("POST", f"/api/v1/admin/generic-sources/{quote(source_id, safe='')}/{verb}")
    click.echo(f"Generic source {verb}d: {source_id}")


@source.command("enable")
@click.argument("source_id")
@click.pass_context
def enable(ctx: click.Context, source_id: str) -> None:
    """Enable a generic source."""
    _toggle(ctx, source_id, True)


@source.command("disable")
@click.argument("source_id")
@click.pass_context
def disable(ctx: click.Context, source_id: str) -> None:
    """Disable a generic source (its webhooks answer 404)."""
    _toggle(ctx, source_id, False)
