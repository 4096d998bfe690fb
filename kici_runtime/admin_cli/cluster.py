"""``kici-admin cluster status`` and ``kici-admin gc``: the processes sharing the database, and retention now.

Attached to ``kici-admin`` by :mod:`kici_runtime.admin_cli.cli`.
"""

from __future__ import annotations

from typing import Any

import click

from kici_runtime.admin_cli.client import client, echo_json, table

__all__ = ["cluster", "gc"]

_JSON = click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
_KINDS = (
    ("payloads", "payload objects"),
    ("log_chunks", "log chunks"),
    ("runs", "runs"),
    ("jobs", "jobs"),
    ("steps", "steps"),
    ("check_runs", "check runs"),
    ("event_log", "event-log rows"),
    ("idempotency_keys", "idempotency keys"),
)


def _age(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}s ago"


@click.group()
def cluster() -> None:
    """Orchestrator processes sharing the database."""


@cluster.command("status")
@_JSON
@click.pass_context
def cluster_status(ctx: click.Context, as_json: bool) -> None:
    """Show every process with its last heartbeat, which one runs each singleton duty, and the agents."""
    out = client(ctx).request("GET", "/api/v1/admin/cluster")
    if as_json:
        echo_json(out)
        return
    click.echo(
        f"Cluster: {out['status']} (answered by {out['instanceId']}); {out['agentCount']} agent(s), "
        f"{out['activeRuns']} active run(s)"
    )
    rows = [
        (
            ("* " if i["self"] else "") + i["instanceId"],
            i["state"],
            _age(i["heartbeatAgeSeconds"]),
            i.get("hostname") or "",
            i.get("pid") or "",
            i["agents"],
            i.get("recoveredBy") or "",
        )
        for i in out["instances"]
    ]
    click.echo(table(["INSTANCE", "STATE", "HEARTBEAT", "HOST", "PID", "AGENTS", "RECOVERED BY"], rows))
    click.echo("")
    click.echo(
        table(
            ["DUTY", "RUN BY", "LAST RUN"],
            [(d["duty"], d["instanceId"] or "(not run yet)", d["lastRunAt"] or "") for d in out["duties"]],
        )
    )
    if out.get("agents"):
        click.echo("")
        click.echo(
            table(
                ["AGENT", "INSTANCE", "LOAD", "LABELS"],
                [
                    (
                        a["agentId"],
                        a["instanceId"],
                        f"{a['activeJobs']}/{a['maxConcurrency']}" + ("" if a["accepting"] else " (draining)"),
                        ",".join(a["labels"]),
                    )
                    for a in out["agents"]
                ],
            )
        )


@click.command()
@click.option("--dry-run", is_flag=True, help="Only count what a sweep would remove.")
@_JSON
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Remove finished data past its retention age now (the KICI_RETENTION_* settings), or count it."""
    out = client(ctx).request("POST", "/api/v1/admin/gc", body={"dryRun": dry_run})
    if as_json:
        echo_json(out)
        return
    counts = out["wouldDelete" if dry_run else "deleted"]
    click.echo("Would remove:" if dry_run else "Removed:")
    for kind, label in _KINDS:
        click.echo(f"  {label}: {counts.get(kind, 0)}")
    cutoffs = out.get("cutoffs", {})
    click.echo("Cutoffs: " + ", ".join(f"{k} before {v}" if v else f"{k} kept forever" for k, v in cutoffs.items()))
