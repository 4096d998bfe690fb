"""Write docs/kici-admin.md from the ``kici-admin`` click commands.

Usage: ``python tools/gen_admin_docs.py`` (write) or ``python tools/gen_admin_docs.py --check``
(exit 1 when the committed file is stale).
"""

from __future__ import annotations

import inspect
import pathlib
import sys

import click

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kici_runtime.admin_cli import cli as admin_cli  # noqa: E402
from tools import docgen  # noqa: E402

TARGET = ROOT / "docs" / "kici-admin.md"

INTRO = """\
# kici-admin

`kici-admin` manages a running orchestrator through its admin API (`/api/v1/admin/...`): webhook sources,
the event log, admin and agent tokens, the master-key rotation and database migrations.

```sh
kici-admin --url http://localhost:4000 --token $KICI_BOOTSTRAP_ADMIN_TOKEN source list
```

- Global options go **before** the subcommand. `--url` defaults to `KICI_ADMIN_URL`, else
  `http://localhost:4000`; include any `KICI_BASE_PATH` prefix. `--token` defaults to `KICI_ADMIN_TOKEN`.
- Output is human-readable; `--json` prints the API's JSON (2-space indent) for scripts.
- A failure prints one line, `Error: <message>`, on stderr. HTTP errors read `HTTP <status>: <error>` and
  exit 1; an unreachable orchestrator exits 69; a bad local input (e.g. a private key that is not PEM) exits 65;
  usage errors exit 2.
- A request body the admin API refuses is answered 400 with one entry per wrong field, its path into the body
  and what is wrong (never the value): `{"error": "Validation error", "details": [{"path": ["labels", 2],
  "message": "must be a string"}]}`. `kici-admin` prints it as
  `HTTP 400: Validation error: labels.2 must be a string`.
- Secret values (`--private-key`, `--webhook-secret`, `--secret`) accept the value itself, `@path` (the file's
  contents, trimmed), `--from-env VAR` or `--stdin`. They are stored encrypted with `KICI_SECRET_KEY` and never
  printed back; listings show only the last four characters. The one exception is
  `source get-webhook-secret`.
- Adding a source that already exists fails with a message naming it and the command that changes it.

## Tokens and roles

The bootstrap token (`KICI_BOOTSTRAP_ADMIN_TOKEN`, or the one printed once at first start when it is unset) is
an `owner`. `token create` makes more:

| Role | Can |
|---|---|
| `owner` | everything, including tokens (`token`, `agent-token`) and `rotate-key` |
| `admin` | sources, secrets, event-log payloads, replay; not tokens or key rotation |
| `auditor` | read-only: source lists, event log (without payloads) |

A token created with `--routing-key` only sees and changes that one source; global commands (adding sources,
tokens, `rotate-key`, `db`) refuse it.

## Rotating a GitHub webhook secret

`source rotate-secret github:<appId> --webhook-secret <new>` stores the new secret and keeps the old one as
`webhookSecretPrevious`: deliveries signed with either verify. Change the secret on GitHub, then end the window
with `source update github:<appId> --drop-previous-secret`.

## Why didn't my workflow run?

`event-log show <deliveryId>` prints the delivery and its decision trace: for every workflow of the lock file
whether it matched, and for each trigger the filter that rejected it (with the pattern and the event's value).
`event-log replay <deliveryId>` processes a stored delivery again, e.g. after fixing a lock file or the App's
credentials. Both need `--org <orgId>` only when two organisations hold the same delivery id (they say so and
name them). `event-log list` fits 120 columns, shortening long ids with `…`; `--wide` and `--json` print them
whole.

# Command reference
"""


def _commands(group: click.Group, ctx: click.Context) -> list[tuple[click.Context, click.Command]]:
    found: list[tuple[click.Context, click.Command]] = []
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        found.append((sub, cmd))
        if isinstance(cmd, click.Group):
            found.extend(_commands(cmd, sub))
    return found


def _options(ctx: click.Context, cmd: click.Command) -> list[str]:
    rows = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or record[0].endswith("--help"):
            continue
        flags, text = (part.replace("|", "\\|") for part in record)
        rows.append(f"| `{flags}` | {text} |")
    return ["| Option | Description |", "|---|---|", *rows] if rows else []


def render_markdown() -> str:
    """The whole reference, deterministic for a given command tree."""
    root = click.Context(admin_cli.cli, info_name="kici-admin")
    out = [INTRO]
    for ctx, cmd in [(root, admin_cli.cli), *_commands(admin_cli.cli, root)]:
        heading = "##" if ctx.parent is root or ctx is root else "###"
        out.append(f"{heading} `{ctx.command_path}`\n")
        out.append("```\n" + " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)]) + "\n```\n")
        if cmd.help:
            out.append(inspect.cleandoc(click.unstyle(cmd.help)) + "\n")
        if isinstance(cmd, click.Group):
            subs = sorted(cmd.list_commands(ctx))
            out.append("Subcommands: " + (", ".join(f"`{s}`" for s in subs) if subs else "none yet") + ".\n")
        options = _options(ctx, cmd)
        if options:
            out.append("\n".join(options) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Generate (or check) docs/kici-admin.md; returns the exit status."""
    return docgen.main(TARGET, ROOT, render_markdown(), "gen_admin_docs.py", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
