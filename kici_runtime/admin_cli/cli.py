"""``kici-admin``: the admin CLI over the orchestrator's admin API (operations spec §2.3-2.7).

Global options go before the subcommand::

    kici-admin --url http://localhost:4000 --token $KICI_BOOTSTRAP_ADMIN_TOKEN source list

Human-readable output by default, ``--json`` for scripts. Failures print one ``Error: ...`` line on stderr
and exit 1 for HTTP errors, or the ``exit_code`` of the :mod:`kici_core.errors` class otherwise; never a
traceback. Other modules add command groups with ``cli.add_command`` (the ``runs`` group is left empty for
``kici_runtime.admin_cli.runs``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote

import click
import httpx

from kici_core import errors
from kici_runtime.config import settings as config

VERSION = "0.1.0"

__all__ = ["AdminClient", "ApiError", "CliFailure", "cli", "main"]


class CliFailure(click.ClickException):
    """A one-line failure: ``Error: <message>`` on stderr, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class ApiError(CliFailure):
    """A non-2xx admin API answer: ``HTTP <status>: <error>``; commands may catch it to say more."""

    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}


def die(message: str, exit_code: int = 1) -> NoReturn:
    raise CliFailure(message, exit_code)


@dataclass(slots=True)
class AdminClient:
    """A small JSON client for the admin API; ``transport`` lets tests talk to an in-process app."""

    url: str
    token: str | None
    transport: httpx.BaseTransport | None = None
    timeout: float = 30.0
    _http: httpx.Client | None = field(default=None, repr=False)

    def _client(self) -> httpx.Client:
        if self.token is None:
            die("--token or KICI_ADMIN_TOKEN is required")
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, transport=self.transport, timeout=self.timeout,
                                      headers={"Authorization": f"Bearer {self.token}",
                                               "User-Agent": f"kici-admin/{VERSION}"})
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def request(self, method: str, path: str, *, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON body, or None for an empty/204 answer.

        Raises:
            ApiError: ``HTTP <status>: <error>`` (exit 1).
            CliFailure: the server could not be reached (exit 69).
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
        try:
            response = self._client().request(method, path, json=body, params=clean)
        except httpx.TransportError as exc:
            die(f"cannot reach the orchestrator at {self.url}: {type(exc).__name__}", errors.Unavailable.exit_code)
        if response.status_code == 204 or not response.content:
            if response.is_success:
                return None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not response.is_success:
            message = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), str) else None
            if message is None:
                message = response.text.strip()[:300] or response.reason_phrase
            if isinstance(data, dict) and isinstance(data.get("details"), list):
                parts = []
                for d in data["details"]:
                    if isinstance(d, dict):
                        where = ".".join(str(p) for p in d.get("path") or []) or "body"
                        parts.append(f"{where} {d.get('message')}")
                if parts:
                    message = f"{message}: {'; '.join(parts)}"
            raise ApiError(f"HTTP {response.status_code}: {message}", response.status_code, data)
        return data


def echo_json(value: Any) -> None:
    """The raw API JSON, 2-space indent."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def read_secret(value: str | None, from_env: str | None, use_stdin: bool, *,
                environ: Callable[[str], str | None] = os.environ.get) -> str | None:
    """Resolve a secret: ``value`` (``@file`` reads the file, trimmed), then ``--from-env``, then ``--stdin``."""
    if value:
        if value.startswith("@"):
            path = value[1:]
            try:
                with open(path, encoding="utf-8") as fh:
                    return fh.read().strip()
            except OSError as exc:
                die(f"cannot read {path}: {exc.strerror or exc}", errors.InvalidInput.exit_code)
        return value
    if from_env:
        found = environ(from_env)
        if found is None:
            die(f"Environment variable {from_env} is not set")
        return found.strip()
    if use_stdin:
        return "\n".join(line.rstrip("\r\n") for line in sys.stdin.readlines()).strip()
    return None


def shorten(text: str, width: int, *, keep_tail: bool = True) -> str:
    """``text`` cut to ``width`` characters with ``…``: in the middle, keeping its head and its tail, or at the
    end (``keep_tail=False``)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    tail = (width - 1) // 3 if keep_tail else 0
    return text[: width - 1 - tail] + "…" + (text[-tail:] if tail else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int | None = None,
          shrink: Sequence[tuple[int, int]] = (), cut_at_end: Sequence[int] = ()) -> str:
    """Columns separated by two spaces and padded, a dash rule under the header.

    With ``max_width``, the columns listed in ``shrink`` as ``(index, narrowest)`` are narrowed in that order,
    each down to its narrowest width before the next one, until a line fits; their longer cells are shortened
    with ``…`` in the middle, or at the end for the columns in ``cut_at_end`` (:func:`shorten`).
    """
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if max_width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - max_width
        for index, narrowest in shrink:
            if excess <= 0:
                break
            cut = min(excess, max(0, widths[index] - max(narrowest, len(headers[index]))))
            widths[index] -= cut
            excess -= cut
        cells = [[shorten(c, w, keep_tail=i not in cut_at_end) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
                 for r in cells]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def human_bytes(n: int) -> str:
    """``<n>B`` under 1 KiB, ``x.xKB`` under 1 MiB, else ``x.xxMB``."""
    if n < 1024:
        return f"{n}B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f}KB"
    return f"{n / (1024 * 1024):.2f}MB"


# ------------------------------------------------------------------------------------------ the group
class _Group(click.Group):
    """Turns stray ``KiciError``s and bad settings into one ``Error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.KiciError as exc:
            raise CliFailure(exc.message, exc.exit_code) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-u", "--url", help="Orchestrator base URL including any KICI_BASE_PATH "
              "[env KICI_ADMIN_URL; default http://localhost:4000].")
@click.option("-t", "--token", help="Admin token [env KICI_ADMIN_TOKEN].")
@click.version_option(VERSION, "-V", "--cli-version", prog_name="kici-admin")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Manage a KiCI orchestrator: webhook sources, event log, tokens, keys and the database."""
    try:
        settings = config.load_admin_settings(os.environ)
    except errors.KiciError as exc:
        die(exc.message, exc.exit_code)
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    env_token = settings.token.reveal() if settings.token is not None else None
    admin = AdminClient(url=(url or settings.url).rstrip("/"), token=token or env_token,
                        transport=obj.get("transport"))
    ctx.obj = obj
    ctx.call_on_close(admin.close)
    ctx.meta["kici.client"] = admin


def client(ctx: click.Context) -> AdminClient:
    """The invocation's admin client (set up by the global options)."""
    found = ctx.meta.get("kici.client")
    if not isinstance(found, AdminClient):  # pragma: no cover - the group callback always sets it
        die("internal: no client")
    return found


@cli.group()
def runs() -> None:
    """Execution runs (list, show, cancel, logs)."""


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
    rows = [[t["id"], t["label"], t["role"], t.get("routing_key") or "-", t.get("created_at"),
             t.get("last_used_at") or "-", "revoked" if t.get("revoked") else "active"] for t in out["tokens"]]
    click.echo(table(["id", "label", "role", "routing_key", "created_at", "last_used_at", "state"], rows)
               if rows else "No tokens.")


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
def agent_token_create(ctx: click.Context, labels: str | None, mandatory: tuple[str, ...],
                       created_by: str | None, as_json: bool) -> None:
    """Create a static agent token (shown once)."""
    body: dict[str, Any] = {"labels": [x.strip() for x in (labels or "").split(",") if x.strip()],
                            "mandatoryLabels": list(mandatory)}
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
    rows = [[t["id"], t["tokenPrefix"] + "…", ",".join(t.get("labels") or []) or "-", t["agentType"],
             t.get("createdAt"), t.get("lastSeenAt") or "-"] for t in out["tokens"]]
    click.echo(table(["id", "prefix", "labels", "type", "created_at", "last_seen_at"], rows)
               if rows else "No agent tokens.")


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
        line += (f" Skipped {out['skippedConfigs']} undecryptable historical config version(s)"
                 " — check orchestrator logs.")
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


RUNS_MODULE = "kici_runtime.admin_cli.runs"
"""Attaches the ``runs`` commands: at import (``@admin_cli.runs.command()``) or via ``register(runs)``."""


def _register() -> None:
    import importlib
    import importlib.util

    from kici_runtime.admin_cli import cluster as admin_cli_cluster
    from kici_runtime.admin_cli import events as admin_cli_events
    from kici_runtime.admin_cli import schedules as admin_cli_schedules
    from kici_runtime.admin_cli import sources as admin_cli_sources

    cli.add_command(admin_cli_sources.source)
    cli.add_command(admin_cli_events.event_log)
    cli.add_command(admin_cli_schedules.schedules)
    cli.add_command(admin_cli_cluster.cluster)  # --- cluster status, gc
    cli.add_command(admin_cli_cluster.gc)
    if importlib.util.find_spec(RUNS_MODULE) is not None:
        module = importlib.import_module(RUNS_MODULE)
        register = getattr(module, "register", None)
        if callable(register):
            register(runs)


_register()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="kici-admin")
