"""``kici-admin schedules``: the registered ``schedule`` triggers with their next and last fire."""

from __future__ import annotations

import click

from kici_runtime.admin_cli.client import client, echo_json, table

__all__ = ["schedules"]


@click.group()
def schedules() -> None:
    """Registered schedule triggers (from default-branch pushes)."""


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def schedules_list(ctx: click.Context, as_json: bool) -> None:
    """List schedules with their next and last fire (UTC); a schedule that cannot fire says why."""
    out = client(ctx).request("GET", "/api/v1/admin/schedules")
    if as_json:
        echo_json(out)
        return
    rows = [
        (
            s["repo"],
            s["workflow"],
            s["cronExpression"],
            s["timezone"],
            f"ERROR: {s['error']}" if s.get("error") else s.get("nextFireAt") or "",
            s.get("lastFireAt") or "never",
        )
        for s in out["schedules"]
    ]
    click.echo(table(["REPO", "WORKFLOW", "CRON", "TIMEZONE", "NEXT FIRE", "LAST FIRE"], rows))
    click.echo(f"{len(rows)} schedule(s)")
