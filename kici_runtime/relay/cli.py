"""``kici-relay``: run the reference relay and manage its API keys and webhook sources.

The database path comes from ``--db`` or the ``KICI_RELAY_DB`` environment variable (this module is the
only place the relay reads the environment).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from kici_adapters.relay.store import GENERIC_METHODS, RelayStore
from kici_core.errors import KiciError
from kici_runtime import wirelogs

DEFAULT_DB = "kici-relay.sqlite3"

F = TypeVar("F", bound=Callable[..., object])


def db_option(func: F) -> F:
    """The shared ``--db`` option."""
    return click.option(
        "--db",
        "db_path",
        envvar="KICI_RELAY_DB",
        default=DEFAULT_DB,
        show_default=True,
        help="SQLite file holding keys, sources and recorded messages (env KICI_RELAY_DB).",
    )(func)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@click.group()
def cli() -> None:
    """Reference KiCI relay for development and tests (not the hosted Platform)."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="TCP port.")
@db_option
@click.option("--public-url", default=None, help="Base URL webhook senders use (shown in source.register.ack).")
@click.option("--ack-timeout", default=5.0, show_default=True, type=float, help="Seconds to wait for webhook.ack.")
@click.option("--heartbeat-timeout", default=180.0, show_default=True, type=float, help="Close 4004 after this.")
@click.option("--strict", is_flag=True, help="Close 4003 on malformed or schema-violating frames.")
@click.option(
    "--compression/--no-compression",
    default=False,
    show_default=True,
    help="Accept permessage-deflate on /ws like the hosted Platform (pointless on loopback or a LAN).",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str,
    port: int,
    db_path: str,
    public_url: str | None,
    ack_timeout: float,
    heartbeat_timeout: float,
    strict: bool,
    compression: bool,
    log_level: str,
) -> None:
    """Run the relay: WebSocket at /ws, webhooks at /webhook/<org>/github and /webhook/<org>/generic/<id>."""
    import uvicorn

    from kici_runtime.relay.app import create_app
    from kici_runtime.relay.hub import RelaySettings
    from kici_runtime.relay.server import uvicorn_config

    settings = RelaySettings(
        ack_timeout=ack_timeout, heartbeat_timeout=heartbeat_timeout, public_url=public_url, strict=strict
    )
    app = create_app(RelayStore(db_path), settings)
    server_config = uvicorn_config(app, host=host, port=port, log_level=log_level, compression=compression)
    wirelogs.install()  # after uvicorn configured its loggers: no frame dumps carrying tokens
    uvicorn.Server(server_config).run()


@cli.group()
def key() -> None:
    """Orchestrator API keys (KICI_PLATFORM_TOKEN values)."""


@key.command("create")
@click.option("--org", required=True, help="Organization the key is scoped to.")
@click.option("--name", required=True, help="Name shown in listings.")
@click.option("--description", default="", help="Free text.")
@click.option("--route", "routes", multiple=True, help="Routing pattern provider:id or provider:* (repeatable).")
@db_option
def key_create(org: str, name: str, description: str, routes: tuple[str, ...], db_path: str) -> None:
    """Create a key and print it once."""
    api_key, raw = RelayStore(db_path).create_key(org=org, name=name, description=description, patterns=routes)
    click.echo(raw)
    click.echo(f"created key {api_key.prefix}… for org {org}; it is not stored and cannot be shown again", err=True)


@key.command("list")
@click.option("--org", default=None, help="Only this organization.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option
def key_list(org: str | None, as_json: bool, db_path: str) -> None:
    """List keys (prefix only, never the key)."""
    keys = RelayStore(db_path).list_keys(org=org)
    if as_json:
        click.echo(json.dumps([k.to_json() for k in keys], indent=2))
        return
    if not keys:
        click.echo("No keys.")
        return
    rows = [
        [k.prefix, k.org, k.name, ",".join(k.patterns) or "*", _when(k.created_at), _when(k.last_used_at),
         _when(k.revoked_at)]
        for k in keys
    ]  # fmt: skip
    _table(["prefix", "org", "name", "routes", "created", "last_used", "revoked"], rows)


@key.command("revoke")
@click.argument("prefix")
@db_option
def key_revoke(prefix: str, db_path: str) -> None:
    """Revoke the live key whose prefix starts with PREFIX (a running relay drops its sockets within seconds)."""
    api_key = RelayStore(db_path).revoke_key(prefix)
    click.echo(f"revoked {api_key.prefix} ({api_key.org}/{api_key.name})")


@cli.group()
def source() -> None:
    """Webhook sources the relay accepts (secrets are stored in plain text: development use only)."""


@source.group("add")
def source_add() -> None:
    """Add or replace a source."""


@source_add.command("github")
@click.option("--org", required=True)
@click.option("--app-id", required=True, help="GitHub App id (routing key github:<appId>).")
@click.option("--webhook-secret", required=True, help="The App's webhook secret.")
@db_option
def source_add_github(org: str, app_id: str, webhook_secret: str, db_path: str) -> None:
    """A GitHub App: deliveries to /webhook/<org>/github are checked against x-hub-signature-256."""
    src = RelayStore(db_path).add_github_source(org=org, app_id=app_id, webhook_secret=webhook_secret)
    click.echo(f"{src.routing_key}  POST /webhook/{org}/github")


@source_add.command("generic")
@click.option("--org", required=True)
@click.option("--source-id", required=True, help="Source id in the URL (routing key generic:<org>:<id>).")
@click.option("--secret", default="", help="HMAC secret or bearer token.")
@click.option("--method", type=click.Choice(GENERIC_METHODS), default="hmac_sha256", show_default=True)
@click.option("--header", default=None, help="Header carrying the signature/token (default per method).")
@db_option
def source_add_generic(org: str, source_id: str, secret: str, method: str, header: str | None, db_path: str) -> None:
    """A generic webhook source: deliveries to /webhook/<org>/generic/<source-id>."""
    src = RelayStore(db_path).add_generic_source(
        org=org, source_id=source_id, secret=secret, method=method, header=header
    )
    click.echo(f"{src.routing_key}  POST /webhook/{org}/generic/{source_id}")


@source.command("list")
@db_option
def source_list(db_path: str) -> None:
    """List sources (secrets shown only by their last 4 characters)."""
    sources = RelayStore(db_path).list_sources()
    if not sources:
        click.echo("No sources.")
        return
    rows = [[s.routing_key, s.org, s.method, str(s.to_json()["secretHint"])] for s in sources]
    _table(["routing_key", "org", "method", "secret"], rows)


@source.command("remove")
@click.argument("routing_key")
@db_option
def source_remove(routing_key: str, db_path: str) -> None:
    """Remove a source by routing key."""
    RelayStore(db_path).remove_source(routing_key)
    click.echo(f"removed {routing_key}")


def main(argv: list[str] | None = None) -> None:
    """Console entry: run the CLI; a KiciError prints ``Error: <message>`` and exits with its code."""
    try:
        cli.main(args=argv, prog_name="kici-relay", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KiciError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
