"""``kici-admin``: the admin CLI over the orchestrator's admin API (operations spec §2.3-2.7).

Global options go before the subcommand::

    kici-admin --url http://localhost:4000 --token $KICI_BOOTSTRAP_ADMIN_TOKEN source list

Human-readable output by default, ``--json`` for scripts. Failures print one ``Error: ...`` line on stderr
and exit 1 for HTTP errors, or the ``exit_code`` of the :mod:`kici_core.errors` class otherwise; never a
traceback. This module holds the root group, its global options and the token, key and database commands;
the other command groups live in their own modules (``sources``, ``events``, ``runs``, ``schedules``,
``cluster``) and are attached here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click

from kici_core import errors
from kici_runtime.admin_cli import cluster, events, runs, schedules, sources
from kici_runtime.admin_cli.client import AdminClient, CliFailure, client, die, echo_json, table
from kici_runtime.config import admin as admin_config
from kici_runtime.version import VERSION

__all__ = ["cli", "main"]


# ------------------------------------------------------------------------------------------ the group
class _Group(click.Group):
    """Turns stray ``KiciError``s and bad settings into one ``Error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.KiciError as exc:
            raise CliFailure(exc.message, exc.exit_code) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-u",
    "--url",
    help="Orchestrator base URL including any KICI_BASE_PATH [env KICI_ADMIN_URL; default http://localhost:4000].",
)
@click.option("-t", "--token", help="Admin token [env KICI_ADMIN_TOKEN].")
@click.version_option(VERSION, "-V", "--cli-version", prog_name="kici-admin")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Manage a KiCI orchestrator: webhook sources, event log, tokens, keys and the database."""
    try:
        settings = admin_config.load_admin_settings(os.environ)
    except errors.KiciError as exc:
        die(exc.message, exc.exit_code)
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    env_token = settings.token.reveal() if settings.token is not None else None
    admin = AdminClient(url=(url or settings.url).rstrip("/"), token=token or env_token, transport=obj.get("transport"))
    ctx.obj = obj
    ctx.call_on_close(admin.close)
    ctx.meta["kici.client"] = admin


# ------------------------------------------------------------------------------------------ tokens
@cli.group()
def token() -> None:
    """Admin API tokens."""


@token.command("create")
@click.argument("label")
@click.option("--role", type=click.Choice(["owner", "admin", "auditor"]), required=True)
@click.option("--routing-key", help="Restrict the token to one routing key.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def token_create(ctx: click.Context, label: str, role: str, routing_key: str | None, as_json: bool) -> None:
    """Create an admin token (shown once)."""
    body = {"label": label, "role": role, **({"routingKey": routing_key} if routing_key else {})}
    out = client(ctx).request("POST", "/api/v1/admin/tokens", body=body)
    if as_json:
        echo_json(out)
        return
    click.echo(f"Token created: {out['token']}")
    click.echo(f"Token ID: {out['id']}")
    click.echo("Save this token -- it will not be shown again.")


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """List admin tokens (never their values)."""
    out = client(ctx).request("GET", "/api/v1/admin/tokens")
    if as_json:
        echo_json(out)
        return
    rows = [
        [
            t["id"],
            t["label"],
            t["role"],
            t.get("routing_key") or "-",
            t.get("created_at"),
            t.get("last_used_at") or "-",
            "revoked" if t.get("revoked") else "active",
        ]
        for t in out["tokens"]
    ]
    click.echo(
        table(["id", "label", "role", "routing_key", "created_at", "last_used_at", "state"], rows)
        if rows
        else "No tokens."
    )


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke an admin token."""
    client(ctx).request("DELETE", f"/api/v1/admin/tokens/{token_id}")
    click.echo(f"Token {token_id} revoked.")


@cli.group("agent-token")
def agent_token() -> None:
    """Agent connection tokens (kat_...)."""


@agent_token.command("create")
@click.option("--labels", help="Comma-separated labels the agent may claim.")
@click.option("--mandatory-label", "mandatory", multiple=True, help="A label every job must request (repeat).")
@click.option("--created-by", help="Who the token is for (free text).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def agent_token_create(
    ctx: click.Context, labels: str | None, mandatory: tuple[str, ...], created_by: str | None, as_json: bool
) -> None:
    """Create a static agent token (shown once)."""
    body: dict[str, Any] = {
        "labels": [x.strip() for x in (labels or "").split(",") if x.strip()],
        "mandatoryLabels": list(mandatory),
    }
    if created_by:
        body["createdBy"] = created_by
    out = client(ctx).request("POST", "/api/v1/agent-tokens", body=body)
    if as_json:
        echo_json(out)
        return
    click.echo(f"Agent token created: {out['token']}")
    click.echo(f"Token ID: {out['id']}")
    click.echo(f"Prefix: {out['tokenPrefix']}")
    click.echo("Save this token -- it will not be shown again. Give it to the agent as KICI_AGENT_TOKEN.")


@agent_token.command("list")
@click.option("--type", "kind", type=click.Choice(["static", "ephemeral"]))
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def agent_token_list(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """List non-revoked agent tokens (prefix only)."""
    out = client(ctx).request("GET", "/api/v1/agent-tokens", params={"type": kind})
    if as_json:
        echo_json(out)
        return
    rows = [
        [
            t["id"],
            t["tokenPrefix"] + "…",
            ",".join(t.get("labels") or []) or "-",
            t["agentType"],
            t.get("createdAt"),
            t.get("lastSeenAt") or "-",
        ]
        for t in out["tokens"]
    ]
    click.echo(
        table(["id", "prefix", "labels", "type", "created_at", "last_seen_at"], rows) if rows else "No agent tokens."
    )


@agent_token.command("revoke")
@click.argument("token_id")
@click.pass_context
def agent_token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke an agent token and disconnect the agents using it."""
    out = client(ctx).request("DELETE", f"/api/v1/agent-tokens/{token_id}")
    click.echo(f"Agent token {token_id} revoked; {out.get('kicked', 0)} connection(s) closed.")


@agent_token.command("release")
@click.argument("agent_id")
@click.pass_context
def agent_token_release(ctx: click.Context, agent_id: str) -> None:
    """Free an agent id from the token that first registered it.

    An agent id belongs to the first agent token that registers it; agents presenting another token are
    refused (close 4003) until the id is released here or that token is revoked.
    """
    client(ctx).request("POST", f"/api/v1/admin/agents/{quote(agent_id, safe='')}/release")
    click.echo(f"Agent id {agent_id} released; the next agent token to register it keeps it.")


# ------------------------------------------------------------------------------------------ keys, db
@cli.command("rotate-key")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def rotate_key(ctx: click.Context, as_json: bool) -> None:
    """Re-encrypt every stored secret with the current KICI_SECRET_KEY."""
    out = client(ctx).request("POST", "/api/v1/admin/rotate-key")
    if as_json:
        echo_json(out)
        return
    line = f"Re-encrypted {out['reEncrypted']} secrets, {out['reEncryptedConfigs']} config versions."
    if out.get("skippedConfigs"):
        line += (
            f" Skipped {out['skippedConfigs']} undecryptable historical config version(s) — check orchestrator logs."
        )
    click.echo(line)


@cli.group("db")
def db() -> None:
    """Database schema migrations."""


def _print_status(ctx: click.Context, as_json: bool) -> None:
    out = client(ctx).request("GET", "/api/v1/admin/db/migrate/status")
    if as_json:
        echo_json(out)
        return
    rows = [[m["name"], m["status"], m.get("appliedAt") or "-"] for m in out["migrations"]]
    click.echo(table(["migration", "status", "applied_at"], rows) if rows else "No migrations.")


@db.command("migrate")
@click.option("--status", "status_only", is_flag=True, help="Only show which migrations are applied.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def db_migrate(ctx: click.Context, status_only: bool, as_json: bool) -> None:
    """Apply pending migrations."""
    if status_only:
        _print_status(ctx, as_json)
        return
    out = client(ctx).request("POST", "/api/v1/admin/db/migrate")
    if as_json:
        echo_json(out)
        return
    if not out["applied"]:
        click.echo("Database schema is up to date.")
        return
    click.echo(f"Applied {out['applied']} migration(s):")
    for name in out["migrations"]:
        click.echo(f"  {name}")


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def db_status(ctx: click.Context, as_json: bool) -> None:
    """Show applied and pending migrations."""
    _print_status(ctx, as_json)


cli.add_command(sources.source)
cli.add_command(events.event_log)
cli.add_command(runs.runs)
cli.add_command(schedules.schedules)
cli.add_command(cluster.cluster)  # --- cluster status, gc
cli.add_command(cluster.gc)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="kici-admin")
