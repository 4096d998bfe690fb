"""``kici-admin event-log ...``: list deliveries, show one with its decision trace, replay one.

``event-log show`` answers "why didn't my workflow run?": for each workflow of the lock file it says whether
it matched and, for each trigger, which filter rejected it (the stored ``MatchResult`` trace).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from kici_runtime.admin_cli.client import AdminClient, ApiError, client, die, echo_json, human_bytes, table

LABEL_WIDTH = 15
TABLE_WIDTH = 120
"""``event-log list`` fits this many columns: long ids are shortened with ``…`` (whole with --wide or --json)."""


@click.group("event-log")
def event_log() -> None:
    """Webhook deliveries the orchestrator recorded."""


@event_log.command("list")
@click.option("--org", "org_id", help="Only this org.")
@click.option("--routing-key", help="Only this source (e.g. github:123456).")
@click.option("--event", help="Only this event type (e.g. push).")
@click.option("--action", help="Only this payload action (e.g. opened).")
@click.option("--status", help="received, processed, duplicate, lockfile_missing, lockfile_corrupt or failed.")
@click.option("--from", "--since", "since", metavar="ISO", help="Received at or after (e.g. 2026-03-01T00:00:00Z).")
@click.option("--to", "until", metavar="ISO", help="Received before.")
@click.option("--delivery-id", help="Delivery id contains this text.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--wide", is_flag=True, help="Print whole ids even when lines get longer than 120 columns.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def list_deliveries(
    ctx: click.Context,
    org_id: str | None,
    routing_key: str | None,
    event: str | None,
    action: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    delivery_id: str | None,
    limit: int,
    offset: int,
    wide: bool,
    as_json: bool,
) -> None:
    """List deliveries, newest first (times in UTC), in 120 columns: long ids are shortened with … (whole with
    --wide or --json)."""
    out = client(ctx).request(
        "GET",
        "/api/v1/admin/event-log",
        params={
            "orgId": org_id,
            "routingKey": routing_key,
            "event": event,
            "action": action,
            "status": status,
            "from": since,
            "to": until,
            "deliveryId": delivery_id,
            "limit": limit,
            "offset": offset,
        },
    )
    if as_json:
        echo_json(out)
        return
    deliveries = out["deliveries"]
    if not deliveries:
        click.echo("No deliveries found.")
        return
    rows = [
        [
            _seconds(d["receivedAt"]),
            d["deliveryId"],
            d["routingKey"],
            f"{d['event']}:{d['action']}" if d.get("action") else d["event"],
            d["source"],
            d["status"] + (" (omitted)" if d.get("payloadOmitted") else ""),
            d["matchedCount"],
            human_bytes(int(d.get("payloadSizeBytes") or 0)),
        ]
        for d in deliveries
    ]
    click.echo(
        table(
            ["received_at", "delivery_id", "routing_key", "event", "source", "status", "matched", "size"],
            rows,
            max_width=None if wide else TABLE_WIDTH,
            shrink=_SHRINK,
            cut_at_end=(5,),
        )
    )
    click.echo("")
    click.echo(f"Showing {len(deliveries)} of {out['total']} (offset {out['offset']}, limit {out['limit']})")


_SHRINK = ((1, 36), (2, 13), (3, 10), (5, 9), (1, 12))
"""Narrowed in this order to fit: delivery ids longer than a GUID, the routing key, the event, the status, and last
the delivery id below the width of a GUID (GitHub's delivery ids stay whole)."""


def _seconds(stamp: str | None) -> str:
    """``2026-03-01T12:00:00.123Z`` -> ``2026-03-01 12:00:00`` (the table's time column, UTC)."""
    if not stamp or not stamp.endswith("Z") or "T" not in stamp:
        return stamp or ""
    return stamp.split(".", 1)[0].removesuffix("Z").replace("T", " ")


def _get_delivery(
    api: AdminClient,
    path: str,
    org_id: str | None,
    delivery_id: str,
    method: str = "GET",
    params: dict[str, Any] | None = None,
) -> Any:
    """Call an event-log route for one delivery; an ambiguous id (no --org, several orgs) names the orgs."""
    try:
        return api.request(method, path, params={"orgId": org_id, **(params or {})})
    except ApiError as exc:
        orgs = exc.body.get("orgIds")
        if exc.status != 409 or not isinstance(orgs, list):
            raise
        die(
            f"delivery {delivery_id} exists in {len(orgs)} orgs ({', '.join(map(str, orgs))}): "
            "choose one with --org <orgId>"
        )


def _line(label: str, value: Any) -> None:
    click.echo(f"  {(label + ':').ljust(LABEL_WIDTH)}{value}")


def _check_text(check: dict[str, Any]) -> str:
    text = f"{check.get('check')}: pattern {json.dumps(check.get('pattern'))}, value {json.dumps(check.get('value'))}"
    if check.get("reason"):
        text += f" — {check['reason']}"
    return text


def trace_lines(trace: Any) -> list[str]:
    """Human lines for a stored decision trace (``MatchResult.to_dict()``)."""
    if not isinstance(trace, dict) or not isinstance(trace.get("decisions"), list):
        return []
    decisions = [d for d in trace["decisions"] if isinstance(d, dict)]
    matched = sum(1 for d in decisions if d.get("matched"))
    lines = [f"Workflows ({matched} of {len(decisions)} matched):"]
    if not decisions:
        lines.append("  (the lock file has no workflows)")
    for d in decisions:
        name = d.get("workflowName")
        if d.get("matched"):
            lines.append(f"  {name}: matched (trigger #{d.get('matchedTrigger')})")
            continue
        lines.append(f"  {name}: not matched — {d.get('summary') or 'No matching trigger'}")
        for t in d.get("triggers") or []:
            if not isinstance(t, dict):
                continue
            checks = [c for c in t.get("checks") or [] if isinstance(c, dict)]
            failed = next((c for c in checks if not c.get("passed")), None)
            head = f"    trigger #{t.get('index')} ({t.get('triggerType')}): "
            if failed is not None:
                lines.append(head + "rejected by " + _check_text(failed))
            elif t.get("reason"):
                lines.append(head + f"rejected: {t['reason']}")
            else:
                lines.append(head + "rejected")
    return lines


@event_log.command("show")
@click.argument("delivery_id")
@click.option("--org", "org_id", help="The org of the delivery (needed only when several orgs hold the id).")
@click.option("--routing-key", help="Only if the delivery came through this source.")
@click.option("--payload", "--include-payload", "include_payload", is_flag=True, help="Also print the payload.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def show(
    ctx: click.Context,
    delivery_id: str,
    org_id: str | None,
    routing_key: str | None,
    include_payload: bool,
    as_json: bool,
) -> None:
    """Show one delivery and why each workflow ran or did not."""
    d = _get_delivery(
        client(ctx),
        f"/api/v1/admin/event-log/{quote(delivery_id, safe=':')}",
        org_id,
        delivery_id,
        params={"includePayload": "true" if include_payload else None, "routingKey": routing_key},
    )
    if as_json:
        echo_json(d)
        return
    click.echo(f"Delivery: {d['deliveryId']}")
    _line("Org", d["orgId"])
    _line("Routing key", d["routingKey"])
    _line("Event", d["event"] + (f" ({d['action']})" if d.get("action") else ""))
    _line("Source", d["source"])
    _line("Provider", d["provider"])
    for label, key in (("Repo", "repoIdentifier"), ("Ref", "ref")):
        if d.get(key):
            _line(label, d[key])
    _line("Status", d["status"])
    _line("Matched", d["matchedCount"])
    for label, key in (("First run", "runId"), ("Error", "errorMessage")):
        if d.get(key):
            _line(label, d[key])
    _line("Received at", d["receivedAt"])
    if d.get("archivedAt"):
        _line("Archived at", d["archivedAt"])
    size = human_bytes(int(d.get("payloadSizeBytes") or 0))
    stored = f"omitted ({d.get('payloadOmittedReason')})" if d.get("payloadOmitted") else "stored"
    _line("Payload", f"{stored} -- {size}")
    _line("Payload hash", d.get("payloadHash"))
    click.echo("")
    lines = trace_lines(d.get("decisionTrace"))
    if lines:
        for line in lines:
            click.echo(line)
    else:
        click.echo(f"No decision trace recorded (status {d['status']}).")
    if include_payload:
        click.echo("")
        if d.get("payloadOmitted"):
            click.echo(f"Payload was omitted at ingress; reason: {d.get('payloadOmittedReason')}")
        elif "payload" in d:
            click.echo("Payload:")
            click.echo(json.dumps(d["payload"], indent=2, ensure_ascii=False))
        elif d.get("payloadReadError"):
            click.echo(f"Payload: {d['payloadReadError']}")


@event_log.command("replay")
@click.argument("delivery_id")
@click.option("--org", "org_id", help="The org of the delivery (needed only when several orgs hold the id).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw API JSON.")
@click.pass_context
def replay(ctx: click.Context, delivery_id: str, org_id: str | None, as_json: bool) -> None:
    """Process a stored delivery again (e.g. after fixing a lock file or credentials)."""
    out = _get_delivery(
        client(ctx),
        f"/api/v1/admin/event-log/{quote(delivery_id, safe=':')}/replay",
        org_id,
        delivery_id,
        method="POST",
    )
    if as_json:
        echo_json(out)
        return
    click.echo(f"Delivery {delivery_id} queued for processing again.")
